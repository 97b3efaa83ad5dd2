"""The panel's labeled pairs, each (volume, segmentation, segments) stored as ONE unit. No Qt.

A pair is kept in the module's parameter node as two single node references under roles that
carry the pair's own key (``CPCSAMPair<key>Volume``, ``CPCSAMPair<key>Segmentation``) and one
entry ``{"key", "segments"}`` of the JSON parameter ``LabeledPairs``. When a node is deleted,
MRML removes the references to it (``vtkMRMLNode::UpdateReferences``); with parallel lists of
references that shifted the following entries and silently re-paired volumes with other
segmentations. Here the deleted node's slot of its own pair becomes ``None``: the pair is shown as
incomplete and left out of training, and no other pair changes. Node references (not IDs in a
string) also follow the ID changes of a scene import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["LabeledPair", "PAIRS_PARAMETER", "labeled_pairs", "store_pairs", "add_pair", "remove_pair",
           "complete_pairs"]

PAIRS_PARAMETER = "LabeledPairs"


@dataclass
class LabeledPair:
    key: str
    volume: object  #: vtkMRMLVolumeNode or None (deleted)
    segmentation: object  #: vtkMRMLSegmentationNode or None (deleted)
    segment_ids: Optional[List[str]] = None  #: None: every segment

    @property
    def complete(self) -> bool:
        return self.volume is not None and self.segmentation is not None

    def as_tuple(self) -> Tuple[object, object, Optional[List[str]]]:
        return self.volume, self.segmentation, self.segment_ids


def _roles(key: str) -> Tuple[str, str]:
    return f"CPCSAMPair{key}Volume", f"CPCSAMPair{key}Segmentation"


def _entries(parameter_node) -> List[dict]:
    try:
        entries = json.loads(parameter_node.GetParameter(PAIRS_PARAMETER) or "[]")
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("key"), str)]


def labeled_pairs(parameter_node) -> List[LabeledPair]:
    """The stored pairs in their order; a deleted node reads as ``None`` in its own pair only."""
    pairs = []
    for entry in _entries(parameter_node):
        volume_role, segmentation_role = _roles(entry["key"])
        segments = entry.get("segments")
        pairs.append(LabeledPair(entry["key"], parameter_node.GetNodeReference(volume_role),
                                 parameter_node.GetNodeReference(segmentation_role),
                                 list(segments) if segments else None))
    return pairs


def store_pairs(parameter_node, pairs: Sequence[LabeledPair]) -> None:
    """Replace the stored pairs by ``pairs`` (one Modified event)."""
    was_modifying = parameter_node.StartModify()
    try:
        for entry in _entries(parameter_node):
            for role in _roles(entry["key"]):
                parameter_node.RemoveNodeReferenceIDs(role)
        entries = []
        for pair in pairs:
            volume_role, segmentation_role = _roles(pair.key)
            parameter_node.SetNodeReferenceID(volume_role, pair.volume.GetID() if pair.volume else None)
            parameter_node.SetNodeReferenceID(segmentation_role,
                                              pair.segmentation.GetID() if pair.segmentation else None)
            entries.append({"key": pair.key, "segments": list(pair.segment_ids) if pair.segment_ids else None})
        parameter_node.SetParameter(PAIRS_PARAMETER, json.dumps(entries))
    finally:
        parameter_node.EndModify(was_modifying)


def _new_key(pairs: Sequence[LabeledPair]) -> str:
    used = {p.key for p in pairs}
    n = len(pairs)
    while str(n) in used:
        n += 1
    return str(n)


def add_pair(parameter_node, volume, segmentation, segment_ids=None) -> str:
    """Add a pair (or replace the segments of the same volume and segmentation); returns its key."""
    if volume is None or segmentation is None:
        raise ValueError("a labeled pair needs a volume and a segmentation")
    pairs = labeled_pairs(parameter_node)
    for pair in pairs:
        if pair.volume is volume and pair.segmentation is segmentation:
            pair.segment_ids = list(segment_ids) if segment_ids else None
            store_pairs(parameter_node, pairs)
            return pair.key
    key = _new_key(pairs)
    pairs.append(LabeledPair(key, volume, segmentation, list(segment_ids) if segment_ids else None))
    store_pairs(parameter_node, pairs)
    return key


def remove_pair(parameter_node, row: int) -> None:
    """Remove the pair shown in ``row`` (out-of-range rows are ignored)."""
    pairs = labeled_pairs(parameter_node)
    if 0 <= row < len(pairs):
        del pairs[row]
        store_pairs(parameter_node, pairs)


def complete_pairs(pairs: Sequence[LabeledPair]):
    """``(complete pairs as (volume, segmentation, segment_ids) tuples, incomplete pairs)``."""
    return ([p.as_tuple() for p in pairs if p.complete], [p for p in pairs if not p.complete])
