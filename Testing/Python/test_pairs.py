"""Labeled pairs in a real MRML parameter node (slicer-core): deleting a node never re-pairs."""

from __future__ import annotations

import pytest

slicer = pytest.importorskip("slicer")

from CPCSAMLib.slicer import pairs as P  # noqa: E402


@pytest.fixture()
def scene():
    s = slicer.vtkMRMLScene()
    yield s
    s.Clear(1)


def _nodes(scene):
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "CPCSAM")
    v1, v2, v3 = (scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"V{i}") for i in (1, 2, 3))
    s1, s2, s3 = (scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"S{i}") for i in (1, 2, 3))
    return node, (v1, v2, v3), (s1, s2, s3)


def _names(pairs):
    return [(p.volume.GetName() if p.volume else None, p.segmentation.GetName() if p.segmentation else None)
            for p in pairs]


def test_parallel_reference_lists_re_pair_after_a_deletion(scene):
    """The defect this module fixes: MRML removes (does not blank) the reference of a deleted node."""
    node, (v1, v2, _), (s1, s2, _) = _nodes(scene)
    for v, s in ((v1, s1), (v2, s2)):
        node.AddNodeReferenceID("PairVolume", v.GetID())
        node.AddNodeReferenceID("PairSegmentation", s.GetID())
    scene.RemoveNode(v1)
    volumes = [node.GetNthNodeReference("PairVolume", i) for i in range(node.GetNumberOfNodeReferences("PairVolume"))]
    segs = [node.GetNthNodeReference("PairSegmentation", i)
            for i in range(node.GetNumberOfNodeReferences("PairSegmentation"))]
    assert [(v.GetName(), s.GetName()) for v, s in zip(volumes, segs)] == [("V2", "S1")]  # wrong labels


def test_deleting_a_volume_leaves_no_wrong_pair(scene):
    node, (v1, v2, v3), (s1, s2, s3) = _nodes(scene)
    P.add_pair(node, v1, s1)
    P.add_pair(node, v2, s2, ["Segment_1"])
    P.add_pair(node, v3, s3)
    assert _names(P.labeled_pairs(node)) == [("V1", "S1"), ("V2", "S2"), ("V3", "S3")]
    scene.RemoveNode(v1)
    pairs = P.labeled_pairs(node)
    assert _names(pairs) == [(None, "S1"), ("V2", "S2"), ("V3", "S3")]
    assert ("V2", "S1") not in _names(pairs)
    assert pairs[1].segment_ids == ["Segment_1"]
    complete, incomplete = P.complete_pairs(pairs)
    assert [(v.GetName(), s.GetName()) for v, s, _ in complete] == [("V2", "S2"), ("V3", "S3")]
    assert [p.key for p in incomplete] == [pairs[0].key]
    scene.RemoveNode(s3)  # a segmentation, too
    assert _names(P.labeled_pairs(node)) == [(None, "S1"), ("V2", "S2"), ("V3", None)]


def test_add_replace_and_remove(scene):
    node, (v1, v2, v3), (s1, s2, _) = _nodes(scene)
    k1 = P.add_pair(node, v1, s1)
    k2 = P.add_pair(node, v2, s2)
    assert P.add_pair(node, v1, s1, ["a"]) == k1  # same pair: segments replaced, no duplicate
    pairs = P.labeled_pairs(node)
    assert len(pairs) == 2 and pairs[0].segment_ids == ["a"]
    P.remove_pair(node, 0)
    assert _names(P.labeled_pairs(node)) == [("V2", "S2")]
    k3 = P.add_pair(node, v3, s1)
    assert len({k2, k3}) == 2  # keys stay unique after a removal
    assert _names(P.labeled_pairs(node)) == [("V2", "S2"), ("V3", "S1")]
    P.remove_pair(node, 7)  # ignored
    assert len(P.labeled_pairs(node)) == 2
    with pytest.raises(ValueError):
        P.add_pair(node, None, s1)


def test_pairs_survive_a_scene_save_and_reload(scene, tmp_path):
    node, (v1, v2, _), (s1, s2, _) = _nodes(scene)
    P.add_pair(node, v1, s1)
    P.add_pair(node, v2, s2, ["x", "y"])
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetURL(str(tmp_path / "scene.mrml"))
    assert loaded.Connect()
    reloaded = loaded.GetFirstNodeByName("CPCSAM")
    assert _names(P.labeled_pairs(reloaded)) == [("V1", "S1"), ("V2", "S2")]
    assert P.labeled_pairs(reloaded)[1].segment_ids == ["x", "y"]
    loaded.Clear(1)
