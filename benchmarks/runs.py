"""Training runs: one unit of work per (labeled list, method, seed), each with its own result JSON.

A unit trains with the engine's ``run_training`` on the plan's manifest (labeled-only runs get no
unlabeled images), then scores the test list with the Predictor in every requested inference
mode (``unprompted``: the two decoders' mean softmax; ``self_prompt``: the Predictor's
self-prompted inference), per case and per class, in 3D for volumes. A unit whose JSON exists is
kept, so an interrupted benchmark continues where it stopped; a kept unit scored on other test cases
is scored again with its trained model.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from CPCSAMLib import dataset, io
from CPCSAMLib.metrics import case_metrics, summarize, write_reports

from .common import cpu_cores, log, median, read_json, write_json
from .data import Plan, case_name, load_case
from CPCSAMLib.config import TrainConfig
from CPCSAMLib.runtime import autocast_dtype, build_model, prepare_cpu, select_device
from CPCSAMLib.training import run_training
from CPCSAMLib.training.embeddings import EmbeddingCache, EmbeddingStore

TRAINED_METHODS = ("supervised", "cpcsam", "cross_prompting", "cps")
INFERENCE_MODES = ("unprompted", "self_prompt")
TITLES = {
    "supervised": "Labeled-only fine-tuning (same backbone and schedule)",
    "cps": "Cross supervision without prompts (ablation)",
    "cross_prompting": "Cross prompting without prompt consistency (ablation)",
    "cpcsam": "CPC-SAM",
}


def unit_key(method: str, labeled_stem: str, seed: int) -> str:
    return f"{method}__{labeled_stem}__seed{seed}"


def unit_config(base: TrainConfig, plan: Plan, method: str, seed: int) -> TrainConfig:
    """The base configuration with this unit's method and seed (and the shared embedding store)."""
    changes: Dict[str, Any] = {"method": method, "seed": seed}
    if base.freeze_encoder:
        changes["embedding_store"] = str(plan.output / "embedding_store")
    return dataclasses.replace(base, **changes)


# options that differ between the units of one comparison by design, or that do not change the model
PER_UNIT_OPTIONS = ("method", "seed", "embedding_store", "device", "num_threads", "resume", "axis")


def config_differences(first: dict, second: dict) -> List[str]:
    """Names of the training options that differ between two units' configurations."""
    keys = sorted((set(first) | set(second)) - set(PER_UNIT_OPTIONS))
    return [k for k in keys if first.get(k) != second.get(k)]


def prepare_embedding_store(base: TrainConfig, plan: Plan, force: bool, with_unlabeled: bool = True) -> Optional[dict]:
    """Frozen-encoder mode: encodes the original training slices once into the store every run reads
    (the unlabeled ones only ``with_unlabeled``: labeled-only runs never read them). The measured
    seconds per slice are charged to each run for the embeddings it read, so a run's minutes are
    what the method costs on its own."""
    if not base.freeze_encoder:
        return None
    record_path = plan.output / "results" / "embedding_store.json"
    groups = _slicing_groups(base, plan, with_unlabeled)
    names = list(dict.fromkeys(n for group in groups.values() for n in group))
    old = read_json(record_path)
    if old and not force and old.get("images") == len(names):
        log(f"embedding store: kept {record_path} ({old['images']} images)")
        return old
    import numpy as np

    device = select_device(base.device)
    if device.type == "cpu":
        prepare_cpu(base.num_threads)
    amp = autocast_dtype(base.precision, device)
    model = build_model({"backbone": base.backbone, "num_classes": len(plan.layout.classes),
                         "lora_rank": base.lora_rank, "decoder_init": base.decoder_init, "seed": base.seed}, device)
    model.set_channels_last(device.type == "cpu")  # as the training runs encode
    model.freeze_encoder()
    percentiles = tuple(base.percentiles) if base.percentiles else None
    store = EmbeddingStore(plan.output / "embedding_store", model, amp)
    start, total = time.time(), 0
    for axis, group in groups.items():  # the axis each run will slice along
        slices = dataset.build_slices([plan.root / "images" / n for n in group], plan.layout.class_infos(),
                                      model.input_size, axis, percentiles)
        log(f"embedding store: encoding {len(slices)} slices of {len(group)} training images once "
            f"(axis {'default' if axis is None else 'xyz'[axis]})")
        EmbeddingCache(model, slices, 1, np.random.default_rng(0), device, amp, 8, store=store)
        total += len(slices)
    seconds = time.time() - start
    record = {"images": len(names), "slices": total, "computed": store.misses, "already_stored": store.hits,
              "seconds": seconds, "seconds_per_slice": seconds / store.misses if store.misses else
              (old or {}).get("seconds_per_slice"), "device": str(device), "folder": str(store.folder)}
    write_json(record_path, record)
    return record


def _slicing_groups(base: TrainConfig, plan: Plan, with_unlabeled: bool) -> Dict[Optional[int], List[str]]:
    """Training image names by the slicing axis their runs use: the option, else the engine's
    choice from each labeled list (:func:`dataset.choose_axis`)."""
    groups: Dict[Optional[int], List[str]] = {}
    for stem in plan.labeled:
        axis = base.axis
        if axis is None:
            axis, _ = dataset.choose_axis([plan.pair(n) for n in plan.labeled[stem]], plan.layout.class_infos())
        group = groups.setdefault(axis, [])
        group += [n for n in plan.labeled[stem] + (plan.unlabeled[stem] if with_unlabeled else []) if n not in group]
    return groups


def score_test_list(predictor, plan: Plan, mode: str) -> tuple:
    """Per-case, per-class metric rows of the test list and seconds per case, for one inference mode."""
    import SimpleITK as sitk

    rows: List[dict] = []
    start = time.time()
    for name in plan.test:
        image, reference, spacing = load_case(plan, name)
        prediction = predictor.predict_image(image, self_prompt=mode == "self_prompt")
        predicted = io.label_to_index(sitk.GetArrayFromImage(prediction), plan.layout.label_values)
        rows += case_metrics(predicted, reference, plan.layout.class_names, spacing, case_name(name))
    return rows, (time.time() - start) / max(1, len(plan.test))


def summary(rows: List[dict]) -> dict:
    """Means over cases: DSC and JC in %, HD95 and ASD in the dataset's unit, overall and per class;
    NaN distances (one side empty) left out and counted; empty predictions of a present class."""
    def numbers(stats: dict) -> dict:
        out = {}
        for key, scale in (("dice", 100.0), ("jaccard", 100.0), ("hd95", 1.0), ("asd", 1.0)):
            out[key] = None if stats[key]["n"] == 0 else stats[key]["mean"] * scale
            out[key + "_nan"] = stats[key]["nan"]
        return out

    s = summarize(rows)
    result = numbers(s["overall"])
    result["per_class"] = {name: numbers(stats) for name, stats in s["per_class"].items()}
    result["cases"] = s["num_cases"]
    result["empty_predictions"] = sum(1 for r in rows if r["pred_voxels"] == 0 and r["gt_voxels"] > 0)
    return result


def _score(predictor, plan: Plan, key: str, modes: List[str]) -> Dict[str, dict]:
    if predictor.card.get("freeze_encoder"):
        # every frozen-encoder run has the same encoder: the test slices are encoded once, then read
        predictor.embedding_store = EmbeddingStore(plan.output / "embedding_store", predictor.model,
                                                   predictor.amp_dtype)
    scores: Dict[str, dict] = {}
    for mode in modes:
        rows, seconds_per_case = score_test_list(predictor, plan, mode)
        csv_path = plan.output / "results" / f"{key}__{mode}_cases.csv"
        write_reports(rows, csv_path, csv_path.with_name(f"{key}__{mode}_metrics.md"), unit=plan.layout.distance_unit)
        scores[mode] = {"metrics": summary(rows), "seconds_per_case": seconds_per_case, "cases_csv": str(csv_path),
                        "rows": rows}
        log(f"{key}: {mode} DSC {scores[mode]['metrics']['dice']:.2f}")
    return scores


def run_unit(base: TrainConfig, plan: Plan, method: str, labeled_stem: str, seed: int, inference: List[str],
             checkpoint: str, force: bool) -> dict:
    """Trains and scores one (method, labeled list, seed); returns its result (kept if it exists)."""
    from CPCSAMLib.infer import Predictor

    key = unit_key(method, labeled_stem, seed)
    result_path = plan.output / "results" / f"{key}.json"
    config = unit_config(base, plan, method, seed)
    old = None if force else read_json(result_path)
    if old is not None:
        changed = config_differences(old.get("config", {}), dataclasses.asdict(config))
        if changed:
            log(f"{key}: kept {result_path}, trained with other options ({', '.join(changed)}); --force to redo")
        same_test = plan.scored_here(old)  # else every mode is scored again, on this plan's cases
        missing = [m for m in inference if not same_test or m not in old.get("inference", {})]
        if not missing:
            log(f"{key}: kept {result_path} (--force to redo)")
            return old
        if old.get("model") and Path(old["model"]).is_file():  # trained already: score the missing modes only
            log(f"{key}: kept the trained model, scoring {', '.join(missing)}"
                + ("" if same_test else f" on {len(plan.test)} cases of {plan.test_list}"))
            predictor = Predictor.from_checkpoint(old["model"], old["config"]["device"],
                                                  precision=old["config"]["precision"])
            if not same_test:
                old.update(inference={}, test_list=plan.test_list, test_cases=len(plan.test),
                           test_total=plan.test_total)
            old["inference"].update(_score(predictor, plan, key, missing))
            write_json(result_path, old)
            return old
    manifest = plan.manifest(labeled_stem, with_unlabeled=method != "supervised")
    run_dir = plan.output / "runs" / key
    step_seconds: List[float] = []
    cached: Dict[str, Any] = {}

    def on_event(event: dict) -> None:
        kind = event.get("event")
        if kind == "cached":
            cached.update(event)
        elif kind == "iteration":
            step_seconds.append(float(event["seconds"]))
            it = event["iteration"]
            if it == 1 or it % 50 == 0 or it == event["iterations"]:
                log(f"{key}: iteration {it}/{event['iterations']} loss {event['loss']:.4f}")
        elif kind == "validation":
            log(f"{key}: validation Dice {event['dice']:.4f} at iteration {event['iteration']}")

    log(f"{key}: training on {len(manifest.labeled)} labeled + {len(manifest.unlabeled)} unlabeled images")
    start = time.time()
    trained = run_training(manifest, run_dir, config, progress=False, on_event=on_event)
    train_seconds = time.time() - start
    model_path = trained.last if checkpoint == "last" else trained.model
    predictor = Predictor.from_checkpoint(model_path, config.device, precision=config.precision)
    store = read_json(plan.output / "results" / "embedding_store.json") or {}
    charged = (cached.get("store_hits") or 0) * (store.get("seconds_per_slice") or 0.0)
    scores = _score(predictor, plan, key, inference)
    step = median(step_seconds)
    result = {
        "method": method, "title": TITLES[method], "seed": seed, "labeled_list": plan.labeled_files[labeled_stem],
        "labeled_key": labeled_stem, "num_labeled": len(manifest.labeled), "num_unlabeled": len(manifest.unlabeled),
        "num_train": len(plan.labeled[labeled_stem]) + len(plan.unlabeled[labeled_stem]),
        "test_list": plan.test_list, "test_cases": len(plan.test), "test_total": plan.test_total,
        "checkpoint": checkpoint, "config": dataclasses.asdict(config), "axis": predictor.card.get("axis"),
        "status": trained.status,
        "iterations_done": trained.iteration, "train_seconds": train_seconds,
        "train_seconds_charged": train_seconds + charged, "seconds_per_iteration": step,
        "embedding": {"read_from_store": cached.get("store_hits"), "computed_in_run": cached.get("store_misses"),
                      "charged_store_seconds": charged},
        "best_val_dice": trained.best_dice, "history": trained.history, "model": model_path,
        "device": str(predictor.device), "cores": cpu_cores(), "inference": scores,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(result_path, result)
    return result


def load_unit_results(output: Path) -> List[dict]:
    results = []
    for path in sorted((output / "results").glob("*__*__seed*.json")):
        data = read_json(path)
        if data and data.get("method") in TRAINED_METHODS:
            results.append(data)
    return results
