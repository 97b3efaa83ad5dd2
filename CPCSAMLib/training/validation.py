"""Validation during training: mean per-case Dice of the unprompted ensemble at model resolution."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from .. import dataset as ds
from ..metrics import dice


@torch.no_grad()
def predict_slices(model, slices: ds.SliceSet, device, batch_size: int = 8, amp_dtype=None,
                   check: Optional[Callable[[], None]] = None) -> np.ndarray:
    """Class indices ``[N, S, S]`` of the unprompted ensemble; ``check()`` runs between batches."""
    model.eval()
    preds = []
    try:
        for s in range(0, len(slices), batch_size):
            if check:
                check()
            x = torch.from_numpy(slices.images[s:s + batch_size][:, None]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                preds.append(model.predict_probs(x).float().argmax(1).cpu().numpy())
    finally:
        model.train()
    return np.concatenate(preds)


def evaluate_slices(model, slices: ds.SliceSet, class_names: List[str], device, batch_size: int = 8,
                    amp_dtype=None, check: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Per class: the mean over cases (slices grouped by source file) of :func:`metrics.dice`."""
    pred = predict_slices(model, slices, device, batch_size, amp_dtype, check)
    cases: Dict[str, List[int]] = {}
    for i, (src, _) in enumerate(slices.source):
        cases.setdefault(src, []).append(i)
    return {name: float(np.mean([dice(pred[idx] == c, slices.labels[idx] == c) for idx in cases.values()]))
            for c, name in enumerate(class_names, start=1)}
