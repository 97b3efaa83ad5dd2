"""Point prompts from label maps: largest 8-connected component, centre and random point."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from CPCSAMLib.errors import InputError
from CPCSAMLib.prompts import (
    BOX_JITTER,
    box_prompts_from_label_maps,
    center_point,
    largest_component,
    points_from_label_maps,
    random_point,
)


def _rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def test_center_of_odd_square_is_its_middle_pixel():
    m = _rect((20, 20), 5, 12, 3, 10)  # 7x7, rows 5..11, cols 3..9
    assert center_point(m) == (6, 8)  # (x=column, y=row)


def test_center_of_odd_rectangle_on_middle_row_first_tie():
    m = _rect((20, 20), 5, 10, 3, 12)  # 5 rows (5..9) x 9 cols (3..11)
    x, y = center_point(m)
    assert y == 7  # middle row, exactly
    # distance 3 is reached on the middle row for cols 5..9; ties -> first in row-major order
    assert x == 5


def test_center_is_inside_when_component_touches_border():
    # the image border counts as boundary: a full map has its centre in the middle
    assert center_point(np.ones((5, 5), dtype=bool)) == (2, 2)
    m = _rect((9, 9), 0, 9, 0, 3)  # 9x3 strip along the left border
    # middle column (x=1), not the border column x=0 an unpadded transform would give;
    # rows 1..7 tie at distance 2 -> first in row-major order
    assert center_point(m) == (1, 1)


def test_largest_component_chooses_biggest_blob():
    m = _rect((20, 20), 1, 4, 1, 4) | _rect((20, 20), 10, 15, 10, 15)  # 3x3 and 5x5
    comp = largest_component(m)
    assert comp.sum() == 25
    assert comp[10:15, 10:15].all() and not comp[1:4, 1:4].any()
    assert center_point(comp) == (12, 12)


def test_corner_touching_squares_are_one_8_connected_component():
    m = _rect((8, 8), 0, 3, 0, 3) | _rect((8, 8), 3, 6, 3, 6)
    assert ndimage.label(m)[1] == 2  # 4-connectivity: two components
    comp = largest_component(m)
    assert comp.sum() == 18 and (comp == m).all()


def test_largest_component_empty_in_empty_out():
    comp = largest_component(np.zeros((6, 7), dtype=bool))
    assert comp.shape == (6, 7) and comp.dtype == bool and not comp.any()


def test_center_of_ring_and_l_shape_lies_inside():
    ring = _rect((16, 16), 2, 14, 2, 14) & ~_rect((16, 16), 4, 12, 4, 12)  # width-2 ring
    x, y = center_point(ring)
    assert ring[y, x]
    ell = _rect((16, 16), 1, 15, 1, 5) | _rect((16, 16), 11, 15, 1, 15)
    x, y = center_point(ell)
    assert ell[y, x]


def test_random_points_inside_varied_and_reproducible():
    ring = _rect((16, 16), 2, 14, 2, 14) & ~_rect((16, 16), 4, 12, 4, 12)
    rng = np.random.default_rng(0)
    pts = [random_point(ring, rng) for _ in range(200)]
    assert all(ring[y, x] for x, y in pts)
    assert len(set(pts)) > 20
    rng_a, rng_b = np.random.default_rng(42), np.random.default_rng(42)
    assert [random_point(ring, rng_a) for _ in range(10)] == [random_point(ring, rng_b) for _ in range(10)]


def test_empty_component_raises():
    with pytest.raises(InputError):
        center_point(np.zeros((4, 4), dtype=bool))
    with pytest.raises(InputError):
        random_point(np.zeros((4, 4), dtype=bool), np.random.default_rng(0))


def test_absent_class_is_padding_point():
    maps = np.zeros((2, 8, 8), dtype=np.int64)
    maps[0, 2:5, 2:5] = 1
    pp = points_from_label_maps(maps, 1, np.random.default_rng(0))
    assert pp.center.shape == (2, 1, 2) and pp.random.shape == (2, 1, 2) and pp.labels.shape == (2, 1)
    assert pp.center.dtype == torch.float32 and pp.random.dtype == torch.float32
    assert pp.labels.dtype == torch.long
    assert pp.labels.tolist() == [[1], [-1]]
    assert pp.center[0, 0].tolist() == [3.0, 3.0]
    assert pp.center[1].abs().sum() == 0 and pp.random[1].abs().sum() == 0


def test_multiclass_map_with_one_class_absent():
    m = np.zeros((1, 20, 20), dtype=np.int64)
    m[0, 1:4, 1:4] = 1          # small blob of class 1
    m[0, 10:17, 10:17] = 1      # larger blob of class 1 (7x7, centre (13, 13))
    m[0, 2:7, 12:17] = 3        # class 3 (5x5, centre (14, 4)); class 2 absent
    pp = points_from_label_maps(m, 3, np.random.default_rng(1))
    assert pp.labels.tolist() == [[1, -1, 3]]
    assert pp.center[0].tolist() == [[13.0, 13.0], [0.0, 0.0], [14.0, 4.0]]
    assert pp.random[0, 1].tolist() == [0.0, 0.0]
    x, y = (int(v) for v in pp.random[0, 0])
    assert 10 <= y < 17 and 10 <= x < 17  # inside the largest class-1 component
    x, y = (int(v) for v in pp.random[0, 2])
    assert m[0, y, x] == 3


def test_all_classes_absent_gives_only_padding():
    pp = points_from_label_maps(np.zeros((1, 5, 5), dtype=np.int64), 2, np.random.default_rng(0))
    assert pp.labels.tolist() == [[-1, -1]]
    assert pp.center.abs().sum() == 0 and pp.random.abs().sum() == 0


def test_torch_input_and_seeded_reproducibility():
    m = torch.zeros(3, 12, 12, dtype=torch.long)
    m[:, 3:9, 2:10] = 1
    m[1, 0:2, 0:2] = 2
    a = points_from_label_maps(m, 2, np.random.default_rng(7))
    b = points_from_label_maps(m.numpy(), 2, np.random.default_rng(7))
    assert torch.equal(a.center, b.center) and torch.equal(a.random, b.random)
    assert torch.equal(a.labels, b.labels)
    assert a.center.device.type == "cpu"
    assert a.labels.tolist() == [[1, -1], [1, 2], [1, -1]]
    if torch.cuda.is_available():
        c = points_from_label_maps(m.cuda(), 2, np.random.default_rng(7))
        assert c.center.device.type == "cpu" and torch.equal(c.random, a.random)
        assert c.to("cuda").labels.device.type == "cuda"


def test_point_sequence_has_background_absent_classes_and_padding():
    """The official code's layout: background point (label 0), one point per class (absent: the
    background's centre, label 0), SAM's padding point (label -1)."""
    m = np.zeros((2, 10, 10), dtype=np.int64)
    m[0, 1:6, 1:6] = 1
    m[1, 4:9, 4:9] = 2
    pp = points_from_label_maps(m, 2, np.random.default_rng(3))
    assert pp.background_present.tolist() == [True, True]
    for b in range(2):
        x, y = (int(v) for v in pp.background_center[b])
        assert m[b, y, x] == 0
        x, y = (int(v) for v in pp.background_random[b])
        assert m[b, y, x] == 0
    coords, labels = pp.sequence("center")
    assert coords.shape == (2, 4, 2) and labels.tolist() == [[0, 1, 0, -1], [0, 0, 2, -1]]
    assert torch.equal(coords[0, 0], pp.background_center[0]) and torch.equal(coords[0, 1], pp.center[0, 0])
    assert torch.equal(coords[0, 2], pp.background_center[0])  # class 2 absent in map 0
    assert torch.equal(coords[1, 1], pp.background_center[1]) and coords[:, 3].abs().sum() == 0
    rcoords, rlabels = pp.sequence("random")
    assert torch.equal(rlabels, labels) and torch.equal(rcoords[0, 0], pp.background_random[0])
    assert torch.equal(rcoords[0, 1], pp.random[0, 0]) and torch.equal(rcoords[0, 2], pp.background_center[0])
    full = points_from_label_maps(np.ones((1, 4, 4), dtype=np.int64), 1, np.random.default_rng(0))
    assert full.background_present.tolist() == [False] and full.sequence()[1].tolist() == [[-1, 1, -1]]
    with pytest.raises(ValueError, match="which"):
        pp.sequence("corner")


def test_box_prompts_from_largest_component_with_margin_and_jitter():
    m = np.zeros((2, 100, 100), dtype=np.int64)
    m[0, 20:40, 10:60] = 1  # largest component of class 1: x 10..59, y 20..39
    m[0, 80:83, 80:83] = 1  # a smaller one, ignored
    m[0, 0:5, 95:100] = 2  # touches the border: clipped
    bp = box_prompts_from_label_maps(m, 2, np.random.default_rng(0), margin=0.1)
    assert bp.present.tolist() == [[True, True], [False, False]]
    assert bp.center[0, 0].tolist() == pytest.approx([10 - 5, 20 - 2, 59 + 5, 39 + 2])
    assert bp.center[0, 1].tolist() == pytest.approx([95 - 1, 0, 99, 4 + 1])
    assert bp.center[1].abs().sum() == 0 and bp.random[1].abs().sum() == 0
    jitter = (bp.random[0, 0] - bp.center[0, 0]).abs()
    size = torch.tensor([60.0, 24.0, 60.0, 24.0])  # widened box: 60 x 24 pixels
    assert (jitter <= BOX_JITTER * size + 1e-4).all() and jitter.sum() > 0
    again = box_prompts_from_label_maps(m, 2, np.random.default_rng(0), margin=0.1)
    assert torch.equal(again.random, bp.random)  # the generator decides the jitter
    no_margin = box_prompts_from_label_maps(m, 2, np.random.default_rng(0), margin=0.0)
    assert no_margin.center[0, 0].tolist() == pytest.approx([9, 19, 60, 40])  # at least one pixel
    with pytest.raises(InputError):
        box_prompts_from_label_maps(m, 2, 0, margin=-1)


def test_bad_maps_raise():
    with pytest.raises(InputError):
        points_from_label_maps(np.full((1, 4, 4), 5), 2, np.random.default_rng(0))
    with pytest.raises(InputError):
        points_from_label_maps(np.zeros((1, 1, 4, 4)), 2, np.random.default_rng(0))


def test_component_boxes_cover_each_sizeable_component_largest_first():
    from CPCSAMLib.prompts import component_boxes_from_label_maps

    maps = np.zeros((2, 64, 64), np.int64)
    maps[0, 2:12, 2:12] = 1      # 100 px, class 1
    maps[0, 40:46, 40:45] = 1    # 30 px: >= 10 % of the largest, kept
    maps[0, 60, 60] = 1          # 1 px: < 10 %, dropped
    maps[0, 20:30, 50:60] = 2    # class 2: one component
    for i in range(4):           # map 1, class 1: four equal components, at most three kept
        maps[1, 5 + 12 * i:10 + 12 * i, 5:10] = 1
    got = component_boxes_from_label_maps(maps, num_classes=2, margin=0.0)
    rows = list(zip(got.index.tolist(), got.cls.tolist(), got.boxes.round().int().tolist()))
    assert rows == [(0, 0, [1, 1, 12, 12]), (0, 0, [39, 39, 45, 46]), (0, 1, [49, 19, 60, 30]),
                    (1, 0, [4, 4, 10, 10]), (1, 0, [4, 16, 10, 22]), (1, 0, [4, 28, 10, 34])]
    empty = component_boxes_from_label_maps(np.zeros((1, 8, 8), np.int64), num_classes=1)
    assert empty.index.numel() == 0 and empty.boxes.shape == (0, 4)
    # one component per class: the same box as the largest-component prompt
    single = np.zeros((1, 64, 64), np.int64)
    single[0, 10:30, 5:25] = 1
    assert torch.equal(component_boxes_from_label_maps(single, 1, margin=0.1).boxes[0],
                       box_prompts_from_label_maps(single, 1, margin=0.1).center[0, 0])


def test_agreed_components_keep_only_what_the_other_map_overlaps():
    from CPCSAMLib.prompts import agreed_components

    maps = np.zeros((2, 32, 32), np.int64)
    maps[0, 2:8, 2:8] = 1        # class 1, seen by the other map at one pixel: kept whole
    maps[0, 20:30, 20:30] = 1    # class 1, larger, the other map sees class 2 there: dropped
    maps[0, 2:6, 20:26] = 2      # class 2, the other map sees nothing: dropped
    maps[1, 10:20, 10:20] = 2    # map 1: seen as class 2 by the other map too: kept
    others = np.zeros_like(maps)
    others[0, 7, 7] = 1
    others[0, 25, 25] = 2
    others[1, 12:14, 12:30] = 2
    got = agreed_components(torch.from_numpy(maps), torch.from_numpy(others), 2)
    assert got.dtype == torch.long
    want = np.zeros_like(maps)
    want[0, 2:8, 2:8] = 1
    want[1, 10:20, 10:20] = 2
    assert np.array_equal(got.numpy(), want)
    # the box prompt of class 1 is now the small agreed component's, not the larger false one's
    box = box_prompts_from_label_maps(got, 2, margin=0.0)
    assert box.present.tolist() == [[True, False], [False, True]]
    assert box.center[0, 0].tolist() == [1.0, 1.0, 8.0, 8.0]  # at least one pixel of margin
    assert np.array_equal(maps[0, 20, 20], 1)  # the input is untouched
    with pytest.raises(InputError):
        agreed_components(maps, others[:, :16], 2)
