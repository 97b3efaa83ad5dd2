"""LiteMedSAM's original weights, zero-shot, prompted from the reference (no training).

Per slice and per class present in the slice: "SAM-point" = the centre point of the class's
largest component (the paper's row); extra context: the same point with 3 masks (best predicted
IoU), and "SAM-box" = the component's bounding box. Volumes are scored in 3D like the trained methods.
"""
from __future__ import annotations

import time
from typing import Dict, List

from CPCSAMLib import io
from CPCSAMLib.metrics import case_metrics, write_reports

from .common import log, read_json, write_json
from .data import Plan, case_name, load_case
from CPCSAMLib.runtime import autocast_dtype, select_device
from .runs import summary

VARIANTS = ("zeroshot_point", "zeroshot_point_multimask", "zeroshot_box")
TITLES = {
    "zeroshot_point": "SAM-point (LiteMedSAM zero-shot, reference centre point)",
    "zeroshot_point_multimask": "SAM-point, 3 masks, best predicted IoU (extra context)",
    "zeroshot_box": "SAM-box (LiteMedSAM zero-shot, reference box; extra context)",
}


def run_zeroshot(plan: Plan, device_name: str, precision: str, force: bool) -> dict:
    result_path = plan.output / "results" / "zeroshot.json"
    old = None if force else read_json(result_path)
    if old is not None and plan.scored_here(old):
        log(f"zeroshot: kept {result_path} (--force to redo)")
        return old
    import numpy as np
    import SimpleITK as sitk
    import torch

    from CPCSAMLib.modeling.backbones import build_backbone
    from CPCSAMLib.prompts import center_point, largest_component

    device = select_device(device_name)
    amp = autocast_dtype(precision, device)
    backbone = build_backbone("litemedsam")
    encoder = backbone.image_encoder.to(device).eval()
    prompt_encoder = backbone.prompt_encoder.to(device).eval()
    decoder = backbone.mask_decoder.to(device).eval()
    size = backbone.input_size
    mean = torch.tensor(backbone.pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.pixel_std, device=device).view(1, 3, 1, 1)
    rows: Dict[str, List[dict]] = {v: [] for v in VARIANTS}

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    def to_grid(v: float, scale: float) -> float:  # pixel centre in the input grid (SAM adds 0.5 itself)
        return (v + 0.5) * scale - 0.5

    start = time.time()
    log(f"zeroshot: LiteMedSAM original weights on {len(plan.test)} test cases")
    with torch.no_grad():
        for name in plan.test:
            image, reference, spacing = load_case(plan, name)
            slices, axis = io.to_slices(image)
            slices = io.normalize(slices)
            reference_image = sitk.GetImageFromArray(reference.astype(np.uint8))
            reference_image.CopyInformation(image)
            reference_slices = io.to_slices(reference_image, axis)[0]
            predictions = {v: np.zeros(reference_slices.shape, np.uint8) for v in VARIANTS}
            for k in range(slices.shape[0]):
                present = [c for c in range(1, len(plan.layout.classes) + 1) if (reference_slices[k] == c).any()]
                if not present:
                    continue
                h, w = slices[k].shape
                x = torch.from_numpy(io.resize(slices[k], size, is_label=False))[None, None].to(device).float()
                x = (x.expand(1, 3, size, size) * 255.0 - mean) / std
                with autocast():
                    embedding = encoder(x)
                sx, sy = size / w, size / h
                for c in present:
                    component = largest_component(reference_slices[k] == c)
                    cx, cy = center_point(component)
                    point = torch.tensor([[[to_grid(cx, sx), to_grid(cy, sy)]]], dtype=torch.float32, device=device)
                    label = torch.ones((1, 1), dtype=torch.int64, device=device)
                    ys, xs = np.nonzero(component)
                    box = torch.tensor([[to_grid(xs.min(), sx), to_grid(ys.min(), sy), to_grid(xs.max(), sx),
                                         to_grid(ys.max(), sy)]], dtype=torch.float32, device=device)
                    for variant in VARIANTS:
                        if variant == "zeroshot_box":
                            sparse, dense = prompt_encoder(points=None, boxes=box, masks=None)
                        else:
                            sparse, dense = prompt_encoder(points=(point, label), boxes=None, masks=None)
                        multimask = variant == "zeroshot_point_multimask"
                        with autocast():
                            logits, iou = decoder(image_embeddings=embedding, image_pe=prompt_encoder.get_dense_pe(),
                                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                  multimask_output=multimask)
                        best = int(iou.float()[0].argmax()) if multimask else 0
                        mask = (logits.float()[0, best] > 0).cpu().numpy().astype(np.uint8)
                        mask = io.resize(mask, (h, w), is_label=True)
                        predictions[variant][k][mask > 0] = c
            for variant in VARIANTS:
                predicted = sitk.GetArrayFromImage(io.from_slices(predictions[variant], image, axis))
                rows[variant] += case_metrics(predicted, reference, plan.layout.class_names, spacing, case_name(name))
    seconds = time.time() - start
    result = {"method": "zeroshot", "test_list": plan.test_list, "test_cases": len(plan.test),
              "test_total": plan.test_total, "seconds": seconds, "variants": {}}
    for variant in VARIANTS:
        csv_path = plan.output / "results" / f"{variant}_cases.csv"
        write_reports(rows[variant], csv_path, csv_path.with_name(f"{variant}_metrics.md"),
                      unit=plan.layout.distance_unit)
        result["variants"][variant] = {"title": TITLES[variant], "metrics": summary(rows[variant]),
                                       "cases_csv": str(csv_path)}
    write_json(result_path, result)
    log(f"zeroshot: SAM-point DSC {result['variants']['zeroshot_point']['metrics']['dice']:.2f}, "
        f"SAM-box DSC {result['variants']['zeroshot_box']['metrics']['dice']:.2f}")
    return result
