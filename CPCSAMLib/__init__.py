"""CPC-SAM engine: cross prompting consistency with SAM for semi-supervised segmentation.

Importable without 3D Slicer. Heavy dependencies (torch, segment_anything) are imported lazily
by the submodules that need them, so ``import CPCSAMLib`` is cheap.
"""

__version__ = "0.1.0"

from .errors import CheckpointError, CPCSAMError, InputError, Cancelled  # noqa: F401
