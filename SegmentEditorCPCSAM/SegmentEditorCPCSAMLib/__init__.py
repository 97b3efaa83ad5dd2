"""The CPC-SAM Segment Editor effect (registered by the SegmentEditorCPCSAM module)."""

from .SegmentEditorEffect import *  # noqa: F401,F403
