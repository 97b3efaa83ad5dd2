"""Point and box prompts from label maps (paper, sections 2.2 and 2.3).

For each semantic class ``c`` of a label map (a ground-truth annotation or the argmax of an
unprompted prediction) we keep the **largest 8-connected component** of the class mask (a
post-processing of the noisy prediction) and take two points from it:

* the **centre point**: the pixel of the component farthest from its boundary, i.e. the argmax
  of the Euclidean distance transform of the component (ties: first pixel in row-major order).
  The map is padded with one background pixel on every side before the transform, so that the
  image border counts as a boundary too; without it a component that touches the border would
  have its "centre" pulled onto the border.
* a **random point**: drawn uniformly over the component's pixels.

Conventions (see ``docs/ENGINE_API.md``):

* Coordinates are ``(x, y)`` = ``(column, row)`` in the pixel grid of the map, as integers stored
  in float tensors. SAM's +0.5 pixel-centre shift is *not* added here; the model adds it.
* One point per class: ``coords [B, C, 2]`` and ``labels [B, C]`` where the label of the point of
  class ``c`` is the class index ``c`` (1..C).
* **Absent classes**: when class ``c`` has no pixel in a map, its point is a *padding point*:
  label ``-1`` ("not a point", SAM's ``not_a_point`` embedding) and coordinates ``(0, 0)``.
* The **background** (class 0) gets a centre and a random point of its own largest component.
  The sequence a decoder is prompted with (:meth:`PointPrompts.sequence`) is the official code's:
  the background point (label 0), one point per class (an absent class gets the background's
  centre point with label 0), then SAM's padding point (label -1), which SAM's prompt encoder adds
  whenever no box is given.

Box prompts (for backbones trained with boxes, such as LiteMedSAM) follow the same rule: the
"centre" prompt of class ``c`` is the bounding box of its largest component, widened by
``margin`` times the box's width and height on each side (at least one pixel), clipped to the map;
the "random" prompt is that box with each edge moved by up to ``BOX_JITTER`` times the box size,
drawn uniformly. Boxes are ``(x0, y0, x1, y1)`` in pixels; an absent class has ``present`` False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

import numpy as np
import torch
from scipy import ndimage

from .errors import InputError

__all__ = [
    "ComponentBoxes",
    "component_boxes_from_label_maps",
    "PointPrompts",
    "BoxPrompts",
    "box_prompts_from_label_maps",
    "agreed_components",
    "component_box",
    "largest_component",
    "center_point",
    "random_point",
    "points_from_label_maps",
    "NOT_A_POINT",
]

#: Label of a padding point (class absent from the map).
NOT_A_POINT = -1

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a boolean ``[H, W]`` mask (empty in -> empty out).

    Ties between components of equal size go to the one whose first pixel comes first in
    row-major order (lowest label of ``scipy.ndimage.label``).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise InputError(f"largest_component expects a 2D mask, got shape {mask.shape}")
    labelled, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labelled.ravel(), minlength=count + 1)
    sizes[0] = 0  # background
    return labelled == int(np.argmax(sizes))


def center_point(component: np.ndarray) -> Tuple[int, int]:
    """``(x, y)`` of the pixel of ``component`` farthest from its boundary.

    The argmax of the Euclidean distance transform of the (one-pixel zero-padded) component;
    ties go to the first pixel in row-major order. Raises ``InputError`` on an empty component.
    """
    component = np.asarray(component, dtype=bool)
    if component.ndim != 2:
        raise InputError(f"center_point expects a 2D mask, got shape {component.shape}")
    if not component.any():
        raise InputError("center_point: the component is empty")
    dist = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(col), int(row)


def random_point(component: np.ndarray, rng: np.random.Generator) -> Tuple[int, int]:
    """``(x, y)`` of a pixel drawn uniformly from ``component`` with ``rng``."""
    component = np.asarray(component, dtype=bool)
    if component.ndim != 2:
        raise InputError(f"random_point expects a 2D mask, got shape {component.shape}")
    flat = np.flatnonzero(component)
    if flat.size == 0:
        raise InputError("random_point: the component is empty")
    index = int(flat[rng.integers(flat.size)])
    row, col = divmod(index, component.shape[1])
    return int(col), int(row)


@dataclass
class PointPrompts:
    """One centre point and one random point per class and map.

    ``center`` and ``random``: float ``[B, C, 2]`` of ``(x, y)``; ``labels``: long ``[B, C]``, the
    class index ``1..C`` or ``-1`` (padding point, coordinates 0) where the class is absent. The
    labels are shared by both points of a class.
    """

    center: torch.Tensor
    random: torch.Tensor
    labels: torch.Tensor
    #: the background's centre and random point ``[B, 2]``; ``background_present [B]`` False when
    #: the whole map is foreground
    background_center: torch.Tensor
    background_random: torch.Tensor
    background_present: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    def __len__(self) -> int:
        return self.batch_size

    def to(self, device: Union[str, torch.device]) -> "PointPrompts":
        return PointPrompts(*(t.to(device) for t in (self.center, self.random, self.labels, self.background_center,
                                                        self.background_random, self.background_present)))

    def sequence(self, which: str = "center") -> Tuple[torch.Tensor, torch.Tensor]:
        """The points a decoder is prompted with, ``(coords [B, C + 2, 2], labels [B, C + 2])``:
        the background's ``which`` point (label 0), class ``c``'s ``which`` point (label ``c``; an
        absent class: the background's centre point, label 0), SAM's padding point (label -1).
        Without background pixels, the background's points are padding points too."""
        if which not in ("center", "random"):
            raise ValueError(f"which must be 'center' or 'random', got {which!r}")
        cls = self.center if which == "center" else self.random
        bg = self.background_center if which == "center" else self.background_random
        bg_label = torch.where(self.background_present, 0, NOT_A_POINT).to(self.labels.dtype)
        absent = self.labels < 0
        coords = torch.where(absent.unsqueeze(-1), self.background_center.unsqueeze(1).to(cls.dtype), cls)
        labels = torch.where(absent, bg_label.unsqueeze(1), self.labels)
        pad = torch.zeros_like(bg).unsqueeze(1)
        coords = torch.cat([bg.unsqueeze(1).to(cls.dtype), coords, pad.to(cls.dtype)], dim=1)
        labels = torch.cat([bg_label.unsqueeze(1), labels, torch.full_like(bg_label, NOT_A_POINT).unsqueeze(1)], dim=1)
        return coords, labels


def _label_maps(maps, num_classes: int) -> np.ndarray:
    """``[B, H, W]`` numpy class-index maps from a map or a batch (numpy or torch, any device), checked."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().to("cpu").numpy()
    maps = np.asarray(maps)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise InputError(f"label maps must be [B, H, W], got shape {maps.shape}")
    if num_classes < 1:
        raise InputError(f"num_classes must be >= 1, got {num_classes}")
    if maps.size and (maps.min() < 0 or maps.max() > num_classes):
        raise InputError(
            f"label maps hold values in [{maps.min()}, {maps.max()}], expected 0..{num_classes}")
    return maps


def points_from_label_maps(maps, num_classes: int, rng=None) -> PointPrompts:
    """Centre and random point of the largest component of each class ``1..num_classes``.

    ``maps``: ``[B, H, W]`` (or one ``[H, W]`` map) of class indices ``0..num_classes``, as a numpy
    array or a torch tensor on any device. ``rng``: a ``np.random.Generator`` (or a seed; ``None``
    = fresh entropy). Returns CPU tensors (see :class:`PointPrompts`); a class absent from a map
    gets a padding point (label ``-1``, coordinates ``(0, 0)``) for both the centre and the
    random point.
    """
    maps = _label_maps(maps, num_classes)
    rng = np.random.default_rng(rng)

    batch = maps.shape[0]
    center = np.zeros((batch, num_classes, 2), dtype=np.float32)
    rand = np.zeros((batch, num_classes, 2), dtype=np.float32)
    labels = np.full((batch, num_classes), NOT_A_POINT, dtype=np.int64)
    bg_center = np.zeros((batch, 2), dtype=np.float32)
    bg_rand = np.zeros((batch, 2), dtype=np.float32)
    bg_present = np.zeros(batch, dtype=bool)
    for b in range(batch):
        for c in range(1, num_classes + 1):
            component = largest_component(maps[b] == c)
            if not component.any():
                continue
            center[b, c - 1] = center_point(component)
            rand[b, c - 1] = random_point(component, rng)
            labels[b, c - 1] = c
        background = largest_component(maps[b] == 0)
        if background.any():
            bg_center[b] = center_point(background)
            bg_rand[b] = random_point(background, rng)
            bg_present[b] = True
    return PointPrompts(*(torch.from_numpy(a) for a in (center, rand, labels, bg_center, bg_rand, bg_present)))


#: Random boxes: each edge moves by up to this fraction of the box's width / height.
BOX_JITTER = 0.1


@dataclass
class BoxPrompts:
    """One "centre" box and one jittered box per class and map.

    ``center`` and ``random``: float ``[B, C, 4]`` of ``(x0, y0, x1, y1)``; ``present``: bool
    ``[B, C]``, False where the class is absent (its boxes are zeros and are not used).
    """

    center: torch.Tensor
    random: torch.Tensor
    present: torch.Tensor

    def to(self, device: Union[str, torch.device]) -> "BoxPrompts":
        return BoxPrompts(self.center.to(device), self.random.to(device), self.present.to(device))


def with_negative_boxes(reference: BoxPrompts, predicted: BoxPrompts) -> BoxPrompts:
    """``reference`` (boxes of the ground truth) plus, for every class that the reference lacks but
    ``predicted`` (boxes of a prediction on the same maps) shows, the predicted boxes. Supervised
    with the ground truth, such a box's class map has background as its target: a negative box."""
    add = predicted.present & ~reference.present
    pick = add[..., None]
    return BoxPrompts(torch.where(pick, predicted.center, reference.center),
                      torch.where(pick, predicted.random, reference.random), reference.present | add)


def agreed_components(maps, others, num_classes: int) -> torch.Tensor:
    """``maps`` with, for each class, only the 8-connected components that overlap the same class in
    ``others`` (label maps of the same images, e.g. the other decoder's prediction); the pixels of
    the other components become background. Cross prompts drawn from the result prompt only objects
    that both decoders see, so one decoder's false positive does not get a box of its own that the
    other decoder then fills. Returns a long tensor on the device of ``maps``."""
    device = maps.device if isinstance(maps, torch.Tensor) else "cpu"
    arr = _label_maps(maps, num_classes).copy()
    other = _label_maps(others, num_classes)
    if other.shape != arr.shape:
        raise InputError(f"label maps of shapes {arr.shape} and {other.shape} cannot be compared")
    for b in range(arr.shape[0]):
        for c in range(1, num_classes + 1):
            labelled, count = ndimage.label(arr[b] == c, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            keep = np.zeros(count + 1, bool)
            keep[np.unique(labelled[other[b] == c])] = True
            keep[0] = False
            arr[b][(labelled > 0) & ~keep[labelled]] = 0
    return torch.from_numpy(arr).long().to(device)


def component_box(component: np.ndarray, margin: float) -> np.ndarray:
    """Box ``(x0, y0, x1, y1)`` (float32, pixels) of the non-empty mask ``component``, widened on
    each side by ``margin`` times its width/height (at least one pixel) and clipped to the map."""
    rows = np.flatnonzero(component.any(1))
    cols = np.flatnonzero(component.any(0))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    mx = max(1.0, margin * (x1 - x0 + 1))
    my = max(1.0, margin * (y1 - y0 + 1))
    h, w = component.shape
    return np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(w - 1.0, x1 + mx), min(h - 1.0, y1 + my)],
                    np.float32)


def _jitter(box: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    out = box + rng.uniform(-BOX_JITTER, BOX_JITTER, 4).astype(np.float32) * np.array([w, h, w, h], np.float32)
    out[[0, 2]] = np.clip(out[[0, 2]], 0, shape[1] - 1)
    out[[1, 3]] = np.clip(out[[1, 3]], 0, shape[0] - 1)
    lo, hi = np.minimum(out[:2], out[2:]), np.maximum(out[:2], out[2:])
    return np.concatenate([lo, hi])


def box_prompts_from_label_maps(maps, num_classes: int, rng=None, margin: float = 0.1) -> BoxPrompts:
    """Box of the largest component of each class ``1..num_classes`` (widened by ``margin``) and a
    jittered copy. ``maps`` as for :func:`points_from_label_maps`; returns CPU tensors."""
    maps = _label_maps(maps, num_classes)
    if margin < 0:
        raise InputError(f"box margin must be >= 0, got {margin}")
    rng = np.random.default_rng(rng)
    batch = maps.shape[0]
    center = np.zeros((batch, num_classes, 4), np.float32)
    rand = np.zeros((batch, num_classes, 4), np.float32)
    present = np.zeros((batch, num_classes), bool)
    for b in range(batch):
        for c in range(1, num_classes + 1):
            component = largest_component(maps[b] == c)
            if not component.any():
                continue
            center[b, c - 1] = component_box(component, margin)
            rand[b, c - 1] = _jitter(center[b, c - 1], component.shape, rng)
            present[b, c - 1] = True
    return BoxPrompts(torch.from_numpy(center), torch.from_numpy(rand), torch.from_numpy(present))


#: Self-prompted inference: components of a class at least this fraction of its largest get a box,
COMPONENT_MIN_FRACTION = 0.1
#: and at most this many (the largest) per class and map.
COMPONENTS_PER_CLASS = 3


@dataclass
class ComponentBoxes:
    """Boxes of several components per class: row ``k`` is map ``index[k]``, class ``cls[k]``
    (0-based, class ``cls[k] + 1`` of the label map), box ``boxes[k]`` ``(x0, y0, x1, y1)``."""

    index: torch.Tensor
    cls: torch.Tensor
    boxes: torch.Tensor

    def to(self, device: Union[str, torch.device]) -> "ComponentBoxes":
        return ComponentBoxes(self.index.to(device), self.cls.to(device), self.boxes.to(device))


def component_boxes_from_label_maps(maps, num_classes: int, margin: float = 0.1,
                                    min_fraction: float = COMPONENT_MIN_FRACTION,
                                    per_class: int = COMPONENTS_PER_CLASS) -> ComponentBoxes:
    """Box (widened by ``margin``) of each 8-connected component of each class that is at least
    ``min_fraction`` of the class's largest component, the ``per_class`` largest at most, largest
    first. Self-prompted inference prompts each of them, so a lesion that is not the largest
    component of the unprompted map is still refined rather than dropped."""
    maps = _label_maps(maps, num_classes)
    if margin < 0:
        raise InputError(f"box margin must be >= 0, got {margin}")
    index, cls, boxes = [], [], []
    for b in range(maps.shape[0]):
        for c in range(1, num_classes + 1):
            labelled, count = ndimage.label(maps[b] == c, structure=_EIGHT_CONNECTED)
            if count == 0:
                continue
            sizes = np.bincount(labelled.ravel(), minlength=count + 1)[1:]
            order = np.argsort(-sizes, kind="stable")[:per_class]
            for k in order:
                if sizes[k] < min_fraction * sizes[order[0]]:
                    break
                index.append(b)
                cls.append(c - 1)
                boxes.append(component_box(labelled == k + 1, margin))
    return ComponentBoxes(torch.tensor(index, dtype=torch.long), torch.tensor(cls, dtype=torch.long),
                          torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros((0, 4)))
