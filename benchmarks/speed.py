"""Speed and memory, each measurement in its own child process (``python -m benchmarks --worker SPEC``),
so that its peak memory and thread settings are its own.

The engine's training step (``CPCObjective.forward``: one encoder pass, backward, AdamW step)
against the official code's structure (``sequential_update``: three rounds, each with its own
encoder pass, backward and step) on the same real batch, inference seconds per slice, and an
exploration table (fp32 vs bf16, 1 vs all threads, OMP wait policy, memory format,
``torch.compile``, decoder-only steps on cached embeddings). This is the only module that uses the
Unix-only ``resource`` module, imported where the peak memory is read.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .common import cpu_cores, fmt as _f, loadavg as _loadavg, log as _log, machine_info, median as _median
from .common import read_json, write_json
from .data import Plan

EXPLORATIONS = ("fp32", "bf16", "fp32_1thread", "bf16_1thread", "omp_wait_policy", "channels_last", "compile",
                "cached_embeddings")


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def resolved_precision(precision: str, device_name: str) -> str:
    """``fp32`` or ``bf16``/``fp16``: the autocast the engine uses on this machine."""
    import torch

    from CPCSAMLib.runtime import autocast_dtype, select_device

    dtype = autocast_dtype(precision, select_device(device_name))
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _amp(precision: str):
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _worker_batch(spec: dict, size: int):
    """The real batch: half labeled (with labels) and half unlabeled slices, no augmentation."""
    import numpy as np
    import torch

    from CPCSAMLib import dataset as ds

    classes = [ds.ClassInfo(name, value) for name, value in spec["classes"]]
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

    from CPCSAMLib.objective import CPCObjective
    from CPCSAMLib.runtime import build_model, select_device, tune_allocator
    from CPCSAMLib.training.step import sequential_update

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
    model = build_model({"backbone": "litemedsam", "num_classes": len(spec["classes"]), "lora_rank": spec["lora_rank"],
                         "decoder_init": spec["decoder_init"], "seed": spec["seed"]}, device)
    result: Dict[str, Any] = {"kind": kind, "setup_seconds": None, "loadavg_before": _loadavg()}

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    if kind == "inference":
        from CPCSAMLib import io
        from CPCSAMLib.infer import Predictor

        classes = [{"name": name, "value": value} for name, value in spec["classes"]]
        card = {"classes": classes, "input_size": model.input_size, "percentiles": None, "backbone": "litemedsam",
                "prompt_type": "box", "box_margin": 0.1}
        predictor = Predictor(model, card, device, spec["precision_option"])
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
        frozen = kind == "cached"  # the engine's frozen-encoder mode: no LoRA, embeddings computed once
        if frozen:
            model.freeze_encoder()
        objective = CPCObjective(model, "cpcsam", spec["lambda_cross"], spec["lambda_consistency"],
                                 frozen_encoder=frozen)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)
        model.set_channels_last(spec.get("channels_last", device.type == "cpu"))  # the exploration may flip it
        if spec.get("compile"):
            for name in ("image_encoder", "decoder1", "decoder2"):
                getattr(model, name).compile()
        if frozen:
            with torch.no_grad(), autocast():
                _sync(device)
                t = time.perf_counter()
                emb = model.encode(torch.cat([xl, xu])).detach()
                _sync(device)
            result["encode_seconds_per_image"] = (time.perf_counter() - t) / (xl.shape[0] + xu.shape[0])
            emb = emb.to(torch.bfloat16 if device.type == "cpu" else torch.float16)  # stored as the engine does
            labeled_count = xl.shape[0]
            xl, xu = emb[:labeled_count].float(), emb[labeled_count:].float()  # the objective takes embeddings

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
    result["peak_rss_mb"] = peak_rss_mb()
    result["loadavg_after"] = _loadavg()
    if device.type == "cuda":
        result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 1024 ** 2
    result.update(device=str(device), precision=spec["precision"], threads=torch.get_num_threads())
    return result


def worker_main(spec_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = _run_worker(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as the measurement's failure
        import traceback

        traceback.print_exc()
        result = {"kind": spec.get("kind"), "error": f"{type(exc).__name__}: {str(exc)[:500]}",
                  "peak_rss_mb": peak_rss_mb()}
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
    repository = Path(__file__).resolve().parents[1]  # ``-m benchmarks`` is found from the repository root
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repository), env.get("PYTHONPATH")) if p)
    with open(logs / f"{name}.log", "w", encoding="utf-8") as log_file:
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks", "--worker", str(spec_path)], cwd=repository,
                                  stdout=log_file, stderr=subprocess.STDOUT, timeout=timeout, env=env)
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
    stem = next(iter(plan.labeled))
    first, unlabeled = plan.labeled[stem], plan.unlabeled[stem]
    img, msk = plan.root / "images", plan.root / plan.layout.label_folder
    return {
        "classes": [list(c) for c in plan.layout.classes],
        "kind": kind, "precision": precision, "precision_option": args.precision if precision != "fp32" else "fp32",
        "threads": threads, "device": args.device, "batch_size": args.batch_size, "seed": args.seed,
        "lora_rank": args.lora_rank, "decoder_init": args.decoder_init, "lambda_cross": args.lambda_cross,
        "lambda_consistency": args.lambda_consistency, "warmup": args.speed_warmup, "repeats": args.speed_repeats,
        "labeled": [[str(img / n), str(msk / n)] for n in first], "unlabeled": [str(img / n) for n in unlabeled[:8]],
        "test_images": [str(img / n) for n in plan.test[:8]],
    }


def threads_of(args) -> int:
    return int(args.num_threads or cpu_cores())


def _default_channels_last(args) -> bool:
    """The engine runs the encoder channels-last on the CPU (DualBranchSAM.set_channels_last)."""
    from CPCSAMLib.runtime import select_device

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
    res = plan.output / "results"
    path = res / "speed.json"
    precision = resolved_precision(args.precision, args.device)
    threads = threads_of(args)
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
            speed[kind] = _measure(spec, plan.output, f"speed_{kind}", args.worker_timeout)
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
            row = _measure(spec, plan.output, f"explore_{name}", args.worker_timeout)
            if "error" in row:
                _log(f"exploration: {name} failed: {row['error']}")
        row["config"] = {k: spec.get(k) for k in ("kind", "precision", "threads", "batch_size", "channels_last",
                                                   "compile", "env")}
        exploration["rows"][name] = row
        write_json(epath, exploration)  # after each row: an interruption keeps what was measured
    return speed



def _exploration_lines(data: dict) -> List[str]:
    ex = (data.get("exploration") or {}).get("rows") or {}
    sp = data.get("speed") or {}
    if not ex:
        return ["Not measured (no --explore rows)."]
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
        return ["Not measured (no --speed)."]
    e, o, inf = sp.get("engine", {}), sp.get("official", {}), sp.get("inference", {})

    def mem(r):
        text = _f(r.get("peak_rss_mb"), 0)
        if r.get("cuda_max_allocated_mb") is not None:
            text += f" (CUDA max allocated {r['cuda_max_allocated_mb']:.0f})"
        return text

    policy = sp.get("omp_wait_policy")
    lines = [f"Batch {sp['batch_size']} real training slices ({sp['batch_size'] // 2} labeled + "
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
    lines += ["", "Both training structures run under the same precision here (as the trainer runs them: "
              "`--update combined` is the engine row, `--update sequential` the official structure)."]
    lines += _load_warning((e, o, inf), (sp.get("machine") or {}).get("cores"))
    return lines



def report_sections(output: Path) -> List[str]:
    """The speed and exploration sections of the report ([] when nothing was measured)."""
    data = {"speed": read_json(output / "results" / "speed.json"),
            "exploration": read_json(output / "results" / "exploration.json")}
    if not data["speed"] and not data["exploration"]:
        return []
    return (["## Speed: engine step vs the official code's structure", ""] + _speed_lines(data["speed"])
            + ["", "## Exploration (engine step, same batch)", ""] + _exploration_lines(data) + [""])
