"""Shared pytest fixtures.

Real test data lives outside the repository: ``$CPCSAM_SHARED_DATA`` if set, else
``<repo>/../shared/data`` (``busi/`` = prepared BUSI 2D images, ``nrrd3d/`` = small 3D NRRD
volumes with label maps). Missing data fails the tests (it is not a reason to skip them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def find_shared_data() -> Path:
    """The shared data folder (``$CPCSAM_SHARED_DATA`` or ``<repo>/../shared/data``)."""
    env = os.environ.get("CPCSAM_SHARED_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        pytest.fail(f"{what} not found at {path}. Set CPCSAM_SHARED_DATA to the folder that "
                    f"holds busi/ and nrrd3d/ (default: <repo>/../shared/data).", pytrace=False)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The shared real-data folder."""
    return _require_dir(find_shared_data(), "Shared test data folder")


@pytest.fixture(scope="session")
def busi_dir(shared_data_dir: Path) -> Path:
    """Prepared BUSI: images/, masks/ (0/255), train.txt, val.txt, labeled_10.txt, labeled_20.txt."""
    return _require_dir(shared_data_dir / "busi", "BUSI data")


@pytest.fixture(scope="session")
def nrrd3d_dir(shared_data_dir: Path) -> Path:
    """Small real 3D NRRD volumes with label maps (brain1/2, breast1, prostate phantom)."""
    return _require_dir(shared_data_dir / "nrrd3d", "3D NRRD data")
