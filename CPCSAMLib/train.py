"""Training: configuration, the loop, validation, checkpoints, resume, progress events, cancel.

Everything that can fail on the user's input (manifest, images, labels, backbone file, resume
checkpoint) is checked before anything is written to the output folder.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from . import dataset as ds
from .checkpoint import check_compatible, load_checkpoint, package_versions, save_checkpoint
from .errors import Cancelled, CheckpointError, InputError
from .events import EventWriter
from .objective import METHODS, CPCObjective


LABELED_VIEWS_TARGET = 160  # frozen-encoder mode: default number of labeled embeddings (views x slices)


@dataclass
class TrainConfig:
    """Training options. Defaults follow the paper; the official code's choices are options."""

    backbone: str = "litemedsam"
    sam_checkpoint: Optional[str] = None
    lora_rank: int = 4
    method: str = "cpcsam"
    iterations: int = 10000
    batch_size: int = 6  # half labeled, half unlabeled
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_iters: Optional[int] = None  # None: the paper's 5000 of 10000, scaled (iterations // 2, at most 5000)
    lr_decay: str = "exp"  # paper: exponential; official code: "poly" (power 0.9)
    lr_final_ratio: float = 0.01  # exponential decay ends at lr * lr_final_ratio
    lambda_cross: float = 0.4
    lambda_consistency: float = 0.05
    decoder_init: str = "random"  # paper; official code: "pretrained"
    update: str = "combined"  # paper: one combined loss; official code: "sequential" (three rounds)
    supervised_iters: int = 0  # official code: 5000 supervised-only iterations first
    val_every: int = 100
    save_every: int = 100
    val_batch_size: int = 8
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 if no bf16) and on CPUs with native bf16; or fp32, bf16
    num_threads: Optional[int] = None
    augment: bool = True
    percentiles: Optional[List[float]] = None
    axis: Optional[int] = None
    max_minutes: Optional[float] = None  # stop (and save) after this much training time
    resume: bool = False
    freeze_encoder: bool = False  # fast CPU mode: no LoRA, embeddings computed once and cached
    cache_views: Optional[int] = None  # frozen-encoder mode: original + (views - 1) augmented copies per labeled
    # slice; None: enough views for about LABELED_VIEWS_TARGET labeled embeddings (1 to 16 per slice)
    cache_views_unlabeled: int = 1  # the same for unlabeled slices
    embedding_store: Optional[str] = None  # frozen-encoder mode: folder that keeps embeddings between runs

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.batch_size < 2 and self.method != "supervised":
            raise InputError("--batch-size must be >= 2 (half labeled, half unlabeled)")
        if self.iterations < 1:
            raise InputError("--iterations must be >= 1")
        if self.lr_decay not in ("exp", "poly"):
            raise InputError("--lr-decay must be 'exp' or 'poly'")
        if self.update not in ("combined", "sequential"):
            raise InputError("--update must be 'combined' or 'sequential'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError("--precision must be auto, fp32 or bf16")
        if self.decoder_init not in ("random", "pretrained"):
            raise InputError("--decoder-init must be 'random' or 'pretrained'")
        if (self.cache_views is not None and self.cache_views < 1) or self.cache_views_unlabeled < 1:
            raise InputError("--cache-views and --cache-views-unlabeled must be >= 1")

    def labeled_views(self, num_labeled: int) -> int:
        """Cached views per labeled slice: ``cache_views``, or by default enough for about
        ``LABELED_VIEWS_TARGET`` labeled embeddings (10 labeled slices: 16 views; 160 or more: 1).
        Measured on BUSI, labeled-only, 300 iterations: 2 views DSC 42.1, 12 views 46.4."""
        if self.cache_views is not None:
            return self.cache_views
        return int(min(16, max(1, math.ceil(LABELED_VIEWS_TARGET / max(1, num_labeled)))))

    @property
    def warmup(self) -> int:
        return min(5000, self.iterations // 2) if self.warmup_iters is None else self.warmup_iters


def learning_rate(cfg: TrainConfig, it: int) -> float:
    """Linear warm-up to ``lr``, then exponential (paper) or poly-0.9 (official code) decay. ``it`` is 0-based."""
    warm = cfg.warmup
    if warm > 0 and it < warm:
        return cfg.lr * (it + 1) / warm
    span = max(1, cfg.iterations - warm)
    progress = min(1.0, (it - warm) / span)
    if cfg.lr_decay == "poly":
        return cfg.lr * (1.0 - progress) ** 0.9
    return cfg.lr * cfg.lr_final_ratio ** progress


def select_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then MPS, then CPU. ``gpu`` means CUDA."""
    name = (name or "auto").lower()
    if name == "gpu":
        name = "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed-precision dtype for ``torch.autocast`` or None (fp32).

    Measured on a 2-core AVX512-BF16 CPU: a batch-4 CPC-SAM step 11.4 s in fp32, 7.1 s in bf16.
    """
    if precision == "fp32" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


@dataclass
class TrainResult:
    status: str
    iteration: int
    best_dice: Optional[float]
    model: Optional[str]
    last: Optional[str]
    history: Dict[str, list] = field(default_factory=dict)
    seconds: float = 0.0


class _Cycler:
    """Endless shuffled index stream over ``n`` items."""

    def __init__(self, n: int, rng: np.random.Generator) -> None:
        self.n, self.rng, self.order, self.pos = n, rng, np.empty(0, int), 0

    def take(self, k: int) -> np.ndarray:
        out = []
        while len(out) < k:
            if self.pos >= len(self.order):
                self.order, self.pos = self.rng.permutation(self.n), 0
            out.append(int(self.order[self.pos]))
            self.pos += 1
        return np.asarray(out)


class _StopFlag:
    """Set by SIGTERM/SIGINT or a cancel callback; checked between iterations."""

    def __init__(self, cancel: Optional[Callable[[], bool]] = None) -> None:
        self.signal: Optional[int] = None
        self.cancel = cancel
        self._old = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def stop(self) -> bool:
        return self.signal is not None or bool(self.cancel and self.cancel())


def sequential_update(objective: CPCObjective, optimizer, xl, yl, xu, rng: np.random.Generator,
                      device: torch.device, amp_dtype: Optional[torch.dtype], scaler=None) -> List[float]:
    """The official code's update (``--update sequential``): one backward and optimiser step per
    round of :meth:`CPCObjective.sequential_rounds`, each round's forward under autocast.
    Returns the rounds' losses."""
    parts: List[float] = []
    rounds = objective.sequential_rounds(xl, yl, xu, rng)
    while True:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            try:  # the round's forward pass runs inside next()
                loss = next(rounds)
            except StopIteration:
                break
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        parts.append(float(loss.detach()))
    return parts


def prepare_cpu(num_threads: Optional[int] = None) -> None:
    """The engine's CPU settings: glibc allocator thresholds, flushed denormals (measured: a
    cached-embedding fp32 step 15.4 s -> 3.3 s), ``num_threads`` (default: all cores)."""
    tune_allocator()
    torch.set_flush_denormal(True)
    torch.set_num_threads(num_threads or max(1, os.cpu_count() or 1))


def tune_allocator() -> None:
    """glibc: keep freed memory instead of returning it to the OS (measured: batch-4 step 28 s -> 19 s)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 2**31 - 1)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _batch(slices: ds.SliceSet, idx: np.ndarray, rng: np.random.Generator, augment: bool, device):
    imgs, labs = [], []
    for i in idx:
        img = slices.images[i]
        lab = slices.labels[i] if slices.labels is not None else None
        if augment:
            img, lab = ds.augment(img, lab, rng)
        imgs.append(img)
        if lab is not None:
            labs.append(lab)
    x = torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32)).to(device)
    y = torch.from_numpy(np.stack(labs).astype(np.int64)).to(device) if labs else None
    return x, y


def evaluate_slices(model, slices: ds.SliceSet, class_names: List[str], device, batch_size: int = 8,
                    amp_dtype=None) -> Dict[str, float]:
    """Mean per-case Dice of the unprompted ensemble at model resolution (both empty counts as 1)."""
    model.eval()
    preds = []
    with torch.no_grad():
        for s in range(0, len(slices), batch_size):
            x = torch.from_numpy(slices.images[s:s + batch_size][:, None]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                preds.append(model.predict_probs(x).float().argmax(1).cpu().numpy())
    model.train()
    pred = np.concatenate(preds)
    cases: Dict[str, List[int]] = {}
    for i, (src, _) in enumerate(slices.source):
        cases.setdefault(src, []).append(i)
    out = {}
    for c, name in enumerate(class_names, start=1):
        scores = []
        for idx in cases.values():
            p, g = pred[idx] == c, slices.labels[idx] == c
            denom = p.sum() + g.sum()
            scores.append(1.0 if denom == 0 else 2.0 * np.logical_and(p, g).sum() / denom)
        out[name] = float(np.mean(scores))
    return out


class EmbeddingStore:
    """Content-addressed embeddings on disk, so that a later run on the same images skips the encoder.

    One file per encoder input: the key hashes the encoder's weights, the autocast dtype and the
    exact (augmented) image array, so a hit is the embedding the encoder would compute again.
    Files are written atomically; an unreadable file is recomputed.
    """

    def __init__(self, folder: str | Path, model, amp_dtype) -> None:
        import hashlib

        h = hashlib.sha1()
        state = model.image_encoder.state_dict()
        # LoRA at its initial state (B = 0) leaves the encoder's output unchanged: its random A must not
        # change the key; trained LoRA weights do
        identity = all(torch.count_nonzero(t) == 0 for k, t in state.items() if ".lora_b" in k)
        for name, t in sorted(state.items()):
            if identity and ".lora_" in name:
                continue
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        h.update(f"{model.input_size}|{amp_dtype}".encode())
        self.folder = Path(folder) / h.hexdigest()[:16]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--embedding-store: cannot create {self.folder} ({exc}); give a writable folder") from exc
        self.hits = self.misses = self.write_errors = 0

    def _path(self, image: np.ndarray) -> Path:
        import hashlib

        a = np.ascontiguousarray(image, dtype=np.float32)
        return self.folder / (hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest() + ".pt")

    def get(self, image: np.ndarray) -> Optional[torch.Tensor]:
        path = self._path(image)
        if path.is_file():
            try:
                t = torch.load(path, map_location="cpu", weights_only=True)
                self.hits += 1
                return t
            except Exception:  # a damaged file: recompute and overwrite
                pass
        self.misses += 1
        return None

    def put(self, image: np.ndarray, embedding: torch.Tensor) -> None:
        """Writes one embedding; a failed write (disk full, read-only folder) only costs the reuse."""
        path = self._path(image)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save(embedding.detach().cpu().clone(), tmp)
            os.replace(tmp, path)
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                print(f"cpcsam: could not write to the embedding store {self.folder} ({exc}); "
                      "training goes on without storing", file=sys.stderr)
            try:
                tmp.unlink()
            except OSError:
                pass


class EmbeddingCache:
    """Frozen-encoder mode: image embeddings of each slice, computed once (``views`` per slice: the
    original and augmented copies, labels augmented jointly), stored in bf16/fp16; with a ``store``,
    read from and written to disk."""

    def __init__(self, model, slices: ds.SliceSet, views: int, rng: np.random.Generator, device, amp_dtype,
                 batch_size: int = 8, on_progress: Optional[Callable[[int, int], None]] = None,
                 store: Optional[EmbeddingStore] = None) -> None:
        n = len(slices)
        views = max(1, views)
        dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        self.embeddings: Optional[torch.Tensor] = None
        self.labels = None if slices.labels is None else np.empty((n, views) + slices.labels.shape[1:], np.uint8)
        self.views = views
        model.eval()
        done = 0
        with torch.no_grad():
            for v in range(views):
                for s in range(0, n, batch_size):
                    imgs = []
                    for i in range(s, min(n, s + batch_size)):
                        img = slices.images[i]
                        lab = slices.labels[i] if slices.labels is not None else None
                        if v > 0:
                            img, lab = ds.augment(img, lab, rng)
                        imgs.append(img)
                        if lab is not None:
                            self.labels[i, v] = lab
                    embs: List[Optional[torch.Tensor]] = [store.get(a) if store else None for a in imgs]
                    todo = [k for k, e in enumerate(embs) if e is None]
                    if todo:
                        x = torch.from_numpy(np.stack([imgs[k] for k in todo])[:, None].astype(np.float32)).to(device)
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            new = model.encode(x).to(dtype)
                        for j, k in enumerate(todo):
                            embs[k] = new[j]
                            if store:
                                store.put(imgs[k], new[j])
                    emb = torch.stack([e.to(device=device, dtype=dtype) for e in embs])
                    if self.embeddings is None:
                        self.embeddings = torch.empty((n, views) + tuple(emb.shape[1:]), dtype=dtype, device=device)
                    self.embeddings[s:s + len(imgs), v] = emb
                    done += len(imgs)
                    if on_progress:
                        on_progress(done, n * views)
        model.train()

    def batch(self, idx: np.ndarray, rng: np.random.Generator):
        v = rng.integers(0, self.views, size=len(idx))
        emb = self.embeddings[torch.as_tensor(idx), torch.as_tensor(v)].float()
        lab = None
        if self.labels is not None:
            lab = torch.from_numpy(self.labels[idx, v].astype(np.int64)).to(emb.device)
        return emb, lab


def _model_card(cfg: TrainConfig, classes: List[ds.ClassInfo], model, iteration: int, val: Optional[dict]) -> dict:
    return {
        "backbone": cfg.backbone,
        "backbone_checkpoint": cfg.sam_checkpoint,
        "classes": [{"name": c.name, "value": int(c.value)} for c in classes],
        "num_classes": len(classes),
        "input_size": model.input_size,
        "lora_rank": cfg.lora_rank,
        "decoder_init": cfg.decoder_init,
        "freeze_encoder": cfg.freeze_encoder,
        "axis": cfg.axis,
        "percentiles": cfg.percentiles,
        "iteration": iteration,
        "validation_dice": val,
        "training_config": dataclasses.asdict(cfg),
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def plot_curves(history: Dict[str, list], path: Path) -> Optional[Path]:
    """Training-curve PNG: losses per iteration and validation Dice."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    it = history.get("iteration", [])
    for key in ("loss", "loss_s", "loss_cross", "loss_c"):
        if history.get(key):
            axes[0].plot(it, history[key], label=key, linewidth=1)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    if history.get("val_iteration"):
        axes[1].plot(history["val_iteration"], history["val_dice"], marker="o")
    axes[1].set_xlabel("iteration")
    axes[1].set_ylabel("validation Dice (mean over classes)")
    axes[1].set_ylim(0, 1)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _ddp_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def run_training(manifest_path: str | Path | ds.Manifest, output_dir: str | Path, config: Optional[TrainConfig] = None,
                 events_path: Optional[str | Path] = None, cancel: Optional[Callable[[], bool]] = None,
                 progress: Optional[bool] = None, on_event: Optional[Callable[[dict], None]] = None) -> TrainResult:
    """Trains CPC-SAM on a manifest and writes checkpoints, events and a curve into ``output_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the objective is wrapped in PyTorch DDP; rank 0 writes.
    Raises :class:`InputError`/:class:`CheckpointError` before writing anything on bad input,
    :class:`Cancelled` after saving a checkpoint when stopped by a signal or ``cancel()``.
    """
    cfg = config or TrainConfig()
    cfg.validate()
    t_start = time.time()
    world, rank, local_rank = _ddp_info()
    manifest = manifest_path if isinstance(manifest_path, ds.Manifest) else ds.load_manifest(manifest_path)
    output_dir = Path(output_dir)
    if cfg.axis is None:
        cfg.axis = manifest.axis

    # ---- everything that can fail on input, before writing -----------------------------------
    from .modeling.backbones import build_backbone
    from .modeling.dual_sam import DualBranchSAM

    from .modeling.backbones import input_size_for

    size = input_size_for(cfg.backbone)
    pct = tuple(cfg.percentiles) if cfg.percentiles else None
    labeled = ds.build_slices(manifest.labeled, manifest.classes, size, cfg.axis, pct)
    unlabeled = ds.build_slices(manifest.unlabeled, manifest.classes, size, cfg.axis, pct) if manifest.unlabeled else None
    val = ds.build_slices(manifest.validation, manifest.classes, size, cfg.axis, pct) if manifest.validation else None
    if cfg.method != "supervised" and cfg.supervised_iters < cfg.iterations and (unlabeled is None or len(unlabeled) == 0):
        raise InputError(f"method {cfg.method} needs unlabeled images but the manifest lists none; "
                         "add some under 'unlabeled' or use --method supervised")
    backbone = build_backbone(cfg.backbone, cfg.sam_checkpoint)
    class_names = manifest.class_names
    num_classes = len(class_names)
    resume_payload = None
    last_path = output_dir / "model_last.pt"
    best_path = output_dir / "model_best.pt"
    if cfg.resume:
        if not last_path.is_file():
            raise CheckpointError(f"--resume: {last_path} does not exist; start without --resume")
        resume_payload = load_checkpoint(last_path)
        check_compatible(resume_payload["model_card"], last_path, backbone=cfg.backbone, class_names=class_names)

    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = select_device(cfg.device)
    if device.type == "cpu":
        prepare_cpu(cfg.num_threads)
    torch.manual_seed(cfg.seed + rank)
    rng = np.random.default_rng(cfg.seed + 7919 * rank)

    model = DualBranchSAM(backbone, num_classes, cfg.lora_rank, cfg.decoder_init, cfg.seed).to(device)
    model.set_channels_last(device.type == "cpu")
    del backbone
    if cfg.freeze_encoder:
        model.freeze_encoder()
    objective = CPCObjective(model, cfg.method, cfg.lambda_cross, cfg.lambda_consistency)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    start_it = 0
    history: Dict[str, list] = {k: [] for k in ("iteration", "loss", "loss_s", "loss_cross", "loss_c", "lr",
                                                "val_iteration", "val_dice")}
    best_dice = None
    if resume_payload is not None:
        missing = set(model.trainable_state_dict()) - set(resume_payload["state_dict"])
        if missing:
            raise CheckpointError(f"{last_path} lacks {len(missing)} trained tensors (e.g. {sorted(missing)[0]})")
        model.load_state_dict(resume_payload["state_dict"], strict=False)
        optimizer.load_state_dict(resume_payload["optimizer"])
        start_it = int(resume_payload["iteration"])
        history = json.loads(resume_payload.get("history", "{}")) or history
        best_dice = resume_payload.get("best_dice")
        best_dice = None if best_dice is None else float(best_dice)
        rng = np.random.default_rng(cfg.seed + 7919 * rank + start_it)
        torch.manual_seed(cfg.seed + rank + start_it)
    step_module = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        if cfg.update == "sequential":
            raise InputError("--update sequential is not supported with several processes; use combined")
        step_module = DDP(objective, device_ids=[local_rank] if device.type == "cuda" else None,
                          find_unused_parameters=True)
    amp_dtype = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    # ---- from here on, output is written (rank 0 only) ----------------------------------------
    main = rank == 0
    events = EventWriter((events_path or output_dir / "events.jsonl") if main else None)
    if on_event:
        events.callbacks.append(on_event)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.json").write_text(json.dumps(
            {"config": dataclasses.asdict(cfg), "classes": [dataclasses.asdict(c) for c in manifest.classes]},
            indent=2))
    stop = _StopFlag(cancel)
    stop.install()
    bl = cfg.batch_size if cfg.method == "supervised" else max(1, cfg.batch_size // 2)
    bu = 0 if cfg.method == "supervised" else cfg.batch_size - bl
    lab_cycle = _Cycler(len(labeled), rng)
    unl_cycle = _Cycler(len(unlabeled), rng) if unlabeled is not None and len(unlabeled) else None
    events.emit("started", iterations=cfg.iterations, start_iteration=start_it, device=str(device),
                classes=class_names, num_labeled=len(labeled), num_unlabeled=0 if unlabeled is None else len(unlabeled),
                num_validation=0 if val is None else len(val), method=cfg.method, backbone=cfg.backbone,
                batch_size=cfg.batch_size, world_size=world, output=str(output_dir))

    lab_cache = unl_cache = None
    if cfg.freeze_encoder:
        t_cache = time.time()
        store = EmbeddingStore(cfg.embedding_store, model, amp_dtype) if cfg.embedding_store and main else None
        views_u = cfg.cache_views_unlabeled
        views_l = cfg.labeled_views(len(labeled))
        lab_cache = EmbeddingCache(model, labeled, views_l, rng, device, amp_dtype, cfg.val_batch_size,
                                   store=store)
        if bu and unlabeled is not None and len(unlabeled):
            unl_cache = EmbeddingCache(model, unlabeled, views_u, rng, device, amp_dtype, cfg.val_batch_size,
                                       store=store)
        events.emit("cached", slices=len(labeled) + (0 if unl_cache is None else len(unlabeled)),
                    views=views_l, views_unlabeled=views_u if unl_cache is not None else None,
                    seconds=round(time.time() - t_cache, 1),
                    store_hits=store.hits if store else None, store_misses=store.misses if store else None)

    bar = None
    show_bar = progress if progress is not None else (main and sys.stderr.isatty())
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start_it, desc="CPC-SAM", unit="it", dynamic_ncols=True)

    saved_last = [None]  # iteration of the latest model_last.pt written by this run

    def save(kind: str, it: int, val_scores=None) -> Path:
        path = best_path if kind == "best" else last_path
        card = _model_card(cfg, manifest.classes, model, it, val_scores)
        extra = None
        if kind == "last":
            extra = {"optimizer": optimizer.state_dict(), "iteration": it, "history": json.dumps(history),
                     "best_dice": best_dice}
        save_checkpoint(path, model.trainable_state_dict(), card, extra)
        if kind == "last":
            saved_last[0] = it
        events.emit("checkpoint", iteration=it, path=str(path), kind=kind)
        return path

    def validate(it: int, best: Optional[float]) -> Optional[float]:
        """Validation Dice; saves model_best.pt when it improves. Returns the best Dice so far."""
        scores = evaluate_slices(model, val, class_names, device, cfg.val_batch_size, amp_dtype)
        mean = float(np.mean(list(scores.values())))
        is_best = best is None or mean > best
        history["val_iteration"].append(it)
        history["val_dice"].append(mean)
        events.emit("validation", iteration=it, dice=mean, dice_per_class=scores, best=is_best)
        if is_best:
            save("best", it, scores)
            return mean
        return best

    status = "completed"
    it = start_it
    model.train()
    try:
        while it < cfg.iterations:
            if stop.stop or (cfg.max_minutes is not None and (time.time() - t_start) / 60 >= cfg.max_minutes):
                status = "cancelled" if stop.stop else "time_limit"
                break
            t0 = time.time()
            lr = learning_rate(cfg, it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            if lab_cache is not None:
                xl, yl = lab_cache.batch(lab_cycle.take(bl), rng)
                xu = unl_cache.batch(unl_cycle.take(bu), rng)[0] if unl_cache is not None else None
            else:
                xl, yl = _batch(labeled, lab_cycle.take(bl), rng, cfg.augment, device)
                xu = None
                if bu and unl_cycle is not None:
                    xu, _ = _batch(unlabeled, unl_cycle.take(bu), rng, cfg.augment, device)
            supervised_only = it < cfg.supervised_iters
            if cfg.update == "sequential" and not supervised_only and xu is not None and lab_cache is None:
                parts = sequential_update(objective, optimizer, xl, yl, xu, rng, device, amp_dtype, scaler)
                out = {"loss": sum(parts), "loss_s": parts[0], "loss_cross": sum(parts[1:]), "loss_c": float("nan")}
            else:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    losses_ = step_module(xl, yl, xu, rng, supervised_only)
                scaler.scale(losses_["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                out = {k: float(v.detach()) for k, v in losses_.items()}
            if not math.isfinite(out["loss"]):
                raise FloatingPointError(f"loss became {out['loss']} at iteration {it + 1}; lower --lr")
            it += 1
            dt = time.time() - t0
            for k in ("loss", "loss_s", "loss_cross", "loss_c"):
                history[k].append(out[k])
            history["iteration"].append(it)
            history["lr"].append(lr)
            events.emit("iteration", iteration=it, iterations=cfg.iterations, lr=lr, seconds=round(dt, 3), **out)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.3f}", lr=f"{lr:.1e}")
            if main and val is not None and (it % cfg.val_every == 0 or it == cfg.iterations):
                best_dice = validate(it, best_dice)
            if main and (it % cfg.save_every == 0 or it == cfg.iterations):
                save("last", it)
    except BaseException as exc:
        if bar is not None:
            bar.close()
        if main:
            kind = type(exc).__name__
            events.emit("error", type=kind, message=str(exc) or kind, iteration=it)
            try:
                exc.reported = True  # the CLI does not report it a second time
            except AttributeError:
                pass
        stop.restore()
        events.close()
        raise
    if bar is not None:
        bar.close()
    stop.restore()
    if main:
        if val is not None and it > start_it and (not history["val_iteration"] or history["val_iteration"][-1] != it):
            best_dice = validate(it, best_dice)
        if saved_last[0] != it or not last_path.is_file():  # not already written at this iteration
            save("last", it)
        if val is None or not best_path.is_file():  # without validation the last model is the model
            save("best", it)
        plot_curves(history, output_dir / "training_curve.png")
        events.emit("finished", iteration=it, status="cancelled" if status == "cancelled" else "completed",
                    reason=status, best_dice=best_dice, model=str(best_path), seconds=round(time.time() - t_start, 1))
    events.close()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    result = TrainResult(status, it, best_dice, str(best_path), str(last_path), history, time.time() - t_start)
    if status == "cancelled":
        raise Cancelled(f"training stopped at iteration {it} by {'signal' if stop.signal else 'request'}; "
                        f"checkpoint saved to {last_path}")
    return result
