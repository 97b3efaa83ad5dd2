"""The one training-options schema.

Every option of ``cpcsam train`` (and of ``cpcsam demo`` and the benchmark, which take the same
options with other defaults) is a field of :class:`TrainConfig`. A field's metadata holds its
command-line flag, help text, choices and validation; its default is the dataclass default.
The parsers are generated from it (:func:`add_train_arguments`), job files are read with
:meth:`TrainConfig.from_dict`, and nothing else spells, defaults or validates an option.

Precedence: dataclass default < the command's overrides (``DEMO_DEFAULTS`` for the demo) < a
``--config`` job file < flags given on the command line.

This module imports neither torch nor numpy (``cpcsam evaluate`` and ``--help`` stay light).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .errors import InputError

#: Training methods: CPC-SAM (paper), two ablations, and the labeled-only baseline.
METHODS = ("cpcsam", "cross_prompting", "cps", "supervised")
BACKBONES = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")
#: How box prompts of several classes reach a decoder: all in one pass (one box per class, like the
#: point prompts' one sequence) or one pass per class box (SAM's one object per prompt).
BOX_PASSES = ("joint", "per_class")

#: Frozen-encoder mode: default number of labeled embeddings (views x labeled slices).
LABELED_VIEWS_TARGET = 160


def _at_least(low: float) -> Callable[[Any], Optional[str]]:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def _positive(v: float) -> Optional[str]:
    return None if v > 0 and math.isfinite(v) else "must be a positive number"


def _fraction(v: float) -> Optional[str]:
    return None if 0.0 <= v <= 1.0 else "must be between 0 and 1"


def _open_fraction(v: float) -> Optional[str]:
    return None if 0.0 < v < 1.0 else "must be between 0 and 1 (exclusive)"


def _ratio(v: float) -> Optional[str]:
    return None if 0.0 < v <= 1.0 else "must be in (0, 1]"


def _percentiles(v: List[float]) -> Optional[str]:
    if len(v) != 2 or not (0.0 <= v[0] < v[1] <= 100.0):
        return "must be two numbers LOW HIGH with 0 <= LOW < HIGH <= 100"
    return None


def option(default: Any, flag: str, help: str, *, kind: type, choices: tuple = (), check=None,
           optional: bool = False, nargs: Optional[int] = None, metavar: Optional[str] = None,
           group: str = "training") -> Any:
    """A TrainConfig field: ``kind`` is the JSON/CLI value type (int, float, str, bool); ``optional``
    admits None; ``nargs`` makes it a list of ``kind``; ``check(value) -> message or None``."""
    meta = {"flag": flag, "help": help, "kind": kind, "choices": tuple(choices), "check": check,
            "optional": optional, "nargs": nargs, "metavar": metavar, "group": group}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def resolve_prompt_type(prompt_type: str, backbone: str) -> str:
    """The ``--prompt-type`` rule: ``auto`` is box prompts for LiteMedSAM (trained with boxes) and
    points for SAM ViT; ``box`` and ``point`` stand."""
    if prompt_type != "auto":
        return prompt_type
    return "box" if backbone == "litemedsam" else "point"


@dataclass
class TrainConfig:
    """Training options. Defaults follow the paper unless a field's help says otherwise."""

    # ---- model ---------------------------------------------------------------------------------
    backbone: str = option("litemedsam", "--backbone", "image encoder: LiteMedSAM (shipped, 256 px) or SAM ViT "
                           "(512 px, needs --sam-checkpoint)", kind=str, choices=BACKBONES, group="model")
    sam_checkpoint: Optional[str] = option(None, "--sam-checkpoint", "SAM checkpoint file (.pth) for sam_vit_* "
                                           "backbones", kind=str, optional=True, metavar="FILE", group="model")
    lora_rank: int = option(4, "--lora-rank", "LoRA rank on the encoder's q and v", kind=int, check=_at_least(1),
                            group="model")
    decoder_init: str = option("pretrained", "--decoder-init", "decoders initialised from the backbone's decoder "
                               "(SAM's token layout; decoder 1 reads mask token 0, decoder 2 token 1) or randomly "
                               "(the paper and the official code)", kind=str, choices=("pretrained", "random"), group="model")
    prompt_type: str = option("auto", "--prompt-type", "prompts made from a decoder's prediction: box or point; "
                              "auto = box for litemedsam, point for SAM ViT", kind=str,
                              choices=("auto", "box", "point"), group="model")
    default_prompt: str = option("auto", "--default-prompt", "sparse prompt of the unprompted pass: none (SAM's "
                                 "empty prompt, the paper) or box (learned tokens that start as the whole-image "
                                 "box); auto = box with box prompts", kind=str, choices=("auto", "none", "box"),
                                 group="model")
    box_pass: str = option("per_class", "--box-pass", "box prompts of several classes: joint = the boxes of all "
                           "classes in one decoder pass, each class's map read from it (touching classes seen "
                           "together); per_class = one pass per class box (SAM's one object per prompt); the "
                           "same for one class", kind=str, choices=BOX_PASSES, group="model")
    box_margin: float = option(0.1, "--box-margin", "box prompts: margin added on each side, as a fraction of "
                               "the box size", kind=float, check=_at_least(0.0), group="model")
    freeze_encoder: bool = option(False, "--freeze-encoder", "fast CPU mode: no LoRA; the encoder runs once per "
                                  "image (embeddings cached)", kind=bool, group="model")
    tune_neck: bool = option(False, "--tune-neck", "also train the image encoder's neck (its last two "
                             "convolutions); with --freeze-encoder the cache keeps the features before the neck",
                             kind=bool, group="model")
    neck_lr_scale: float = option(0.1, "--neck-lr-scale", "--tune-neck: the neck's learning rate as a fraction of "
                                  "--lr", kind=float, check=_positive, group="model")
    cache_views: Optional[int] = option(None, "--cache-views", "frozen-encoder mode: cached views per labeled "
                                        "image (the original + augmented copies); unset: enough for about "
                                        f"{LABELED_VIEWS_TARGET} labeled embeddings, 1 to 16 per image", kind=int,
                                        optional=True, check=_at_least(1), group="model")
    cache_views_unlabeled: int = option(1, "--cache-views-unlabeled", "frozen-encoder mode: cached views per "
                                        "unlabeled image", kind=int, check=_at_least(1), group="model")
    embedding_store: Optional[str] = option(None, "--embedding-store", "frozen-encoder mode: keep embeddings in "
                                            "DIR so later runs on the same images skip the encoder", kind=str,
                                            optional=True, metavar="DIR", group="model")
    # ---- training ------------------------------------------------------------------------------
    method: str = option("cpcsam", "--method", "cpcsam (paper); ablations cross_prompting (no consistency), cps "
                         "(no prompts); supervised (labeled only)", kind=str, choices=METHODS)
    iterations: int = option(10000, "--iterations", "training iterations (the schedule's length)", kind=int,
                             check=_at_least(1))
    max_minutes: Optional[float] = option(None, "--max-minutes", "stop after this many minutes (a checkpoint is "
                                          "saved); the schedule is then sized from the measured step time",
                                          kind=float, optional=True, check=_positive)
    batch_size: int = option(6, "--batch-size", "images per iteration: batch_size // 2 labeled for every method "
                             "(the labeled-only baseline too), the rest unlabeled", kind=int, check=_at_least(2))
    lr: float = option(1e-3, "--lr", "peak learning rate (AdamW)", kind=float, check=_positive)
    weight_decay: float = option(0.1, "--weight-decay", "AdamW weight decay", kind=float, check=_at_least(0.0))
    warmup_iters: Optional[int] = option(None, "--warmup-iters", "linear learning-rate warm-up; unset: "
                                         "min(250, 5%% of the schedule)", kind=int, optional=True,
                                         check=_at_least(0))
    lr_decay: str = option("poly", "--lr-decay", "after warm-up: poly-0.9 down to 0 at the schedule's end "
                           "(official code), constant, or exp down to lr * lr_final_ratio (paper)", kind=str,
                           choices=("poly", "constant", "exp"))
    lr_final_ratio: float = option(0.01, "--lr-final-ratio", "exp decay: the final learning rate as a fraction "
                                   "of --lr", kind=float, check=_ratio)
    lambda_cross: float = option(0.4, "--lambda-cross", "weight of L_cross (lambda1)", kind=float,
                                 check=_at_least(0.0))
    lambda_consistency: float = option(0.05, "--lambda-consistency", "weight of L_c (lambda2)", kind=float,
                                       check=_at_least(0.0))
    supervised_warmup: float = option(0.1, "--supervised-warmup", "fraction of the schedule trained on labeled "
                                      "images only before cross prompting", kind=float, check=_fraction)
    update: str = option("combined", "--update", "one combined loss per iteration (paper) or three optimiser "
                         "rounds (official code; needs the encoder in training, not --freeze-encoder)", kind=str,
                         choices=("combined", "sequential"))
    unlabeled_trains_encoder: bool = option(True, "--unlabeled-trains-encoder", "the unlabeled losses (L_cross, "
                                            "L_c) also train the encoder's LoRA (the paper); with "
                                            "--no-unlabeled-trains-encoder only the labeled loss does, and the "
                                            "unlabeled images train the prompt encoder and decoders", kind=bool)
    negative_boxes: bool = option(False, "--negative-boxes", "box prompts: on labeled images, a class the "
                                  "reference lacks but the other decoder's unprompted prediction shows is also "
                                  "prompted with that prediction's box and supervised as background, so a cross "
                                  "target stops confirming a false positive (for data with many slices without "
                                  "a class)", kind=bool)
    agreed_prompts: bool = option(False, "--agreed-prompts", "cross prompts come only from the components of "
                                  "a decoder's unprompted prediction that the other decoder's prediction "
                                  "overlaps (same class); a class without one is absent, so the other "
                                  "decoder's unprompted map is its target", kind=bool)
    pseudo_label_threshold: Optional[float] = option(None, "--pseudo-label-threshold", "cross and consistency "
                                                     "targets: a pixel whose ensemble probability of its most "
                                                     "likely class is below this becomes background (tighter "
                                                     "targets); unset: the plain argmax (the paper)", kind=float,
                                                     optional=True, check=_open_fraction, metavar="P")
    augment: bool = option(True, "--augment", "rotation/flip augmentation", kind=bool)
    seed: int = option(0, "--seed", "random seed", kind=int)
    # ---- data ----------------------------------------------------------------------------------
    axis: Optional[int] = option(None, "--axis", "slicing axis of 3D volumes (0, 1, 2 = x, y, z); unset: the "
                                 "manifest's, else the largest spacing, or for near-isotropic volumes with "
                                 "several classes the axis whose labeled slices most often show all classes "
                                 "together", kind=int, optional=True, choices=(0, 1, 2), group="data")
    percentiles: Optional[List[float]] = option(None, "--percentiles", "clip intensities to these percentiles "
                                                "before min-max normalisation", kind=float, optional=True, nargs=2,
                                                metavar=("LOW", "HIGH"), check=_percentiles, group="data")
    # ---- validation and output -----------------------------------------------------------------
    val_every: int = option(100, "--val-every", "validate every N iterations", kind=int, check=_at_least(1),
                            group="output")
    val_batch_size: int = option(8, "--val-batch-size", "images per batch in validation and embedding caching",
                                 kind=int, check=_at_least(1), group="output")
    save_every: int = option(100, "--save-every", "write model_last.pt every N iterations", kind=int,
                             check=_at_least(1), group="output")
    resume: bool = option(False, "--resume", "continue the run in the output folder from its model_last.pt",
                          kind=bool, group="output")
    overwrite: bool = option(False, "--overwrite", "replace the run in the output folder (its models are kept "
                             "until this run has trained a checkpoint)", kind=bool, group="output")
    # ---- machine -------------------------------------------------------------------------------
    device: str = option("auto", "--device", "auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps", kind=str,
                         group="machine")
    precision: str = option("auto", "--precision", "auto: bf16 autocast on CUDA and on CPUs with native bf16, "
                            "else fp32", kind=str, choices=("auto", "fp32", "bf16"), group="machine")
    num_threads: Optional[int] = option(None, "--threads", "CPU threads; unset: all cores", kind=int,
                                        optional=True, check=_at_least(1), group="machine")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "training options") -> "TrainConfig":
        """From JSON values (a job file): unknown keys and values of the wrong type are refused."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object of option names, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{source}: unknown option {unknown[0]!r}; known options: {', '.join(sorted(names))}")
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def validate(self, source: str = "") -> None:
        """Every field against its own metadata, then the rules between fields."""
        prefix = f"{source}: " if source else ""
        for f in dataclasses.fields(self):
            problem = _check_field(f, getattr(self, f.name))
            if problem:
                raise InputError(f"{prefix}{f.metadata['flag']} ({f.name}) {problem}, got {getattr(self, f.name)!r}")
        if self.update == "sequential" and self.freeze_encoder:
            raise InputError(f"{prefix}--update sequential runs the encoder in every round and cannot be used with "
                             "--freeze-encoder; use --update combined")
        if self.update == "sequential" and not self.unlabeled_trains_encoder:
            raise InputError(f"{prefix}--no-unlabeled-trains-encoder needs --update combined (the official code's "
                             "rounds train the encoder with every loss)")
        if self.resume and self.overwrite:
            raise InputError(f"{prefix}--resume and --overwrite exclude each other")

    # ---- derived values --------------------------------------------------------------------------
    def labeled_views(self, num_labeled: int) -> int:
        """Cached views per labeled slice: ``cache_views``, or enough for about ``LABELED_VIEWS_TARGET``
        labeled embeddings (10 labeled slices: 16 views; 160 or more: 1). Without ``augment``: 1
        (further views would be copies of the original)."""
        if not self.augment:
            return 1
        if self.cache_views is not None:
            return self.cache_views
        return int(min(16, max(1, math.ceil(LABELED_VIEWS_TARGET / max(1, num_labeled)))))

    def unlabeled_views(self) -> int:
        """Cached views per unlabeled slice: ``cache_views_unlabeled``, or 1 without ``augment``."""
        return self.cache_views_unlabeled if self.augment else 1

    def resolved_prompt_type(self) -> str:
        """``auto``: box prompts for LiteMedSAM (trained with boxes), points for SAM ViT."""
        return resolve_prompt_type(self.prompt_type, self.backbone)

    def resolved_default_prompt(self) -> str:
        """``auto``: the whole-image box for box prompts, SAM's empty prompt for points."""
        if self.default_prompt != "auto":
            return self.default_prompt
        return "box" if self.resolved_prompt_type() == "box" else "none"

    def labeled_batch(self) -> int:
        """Labeled images per iteration, the same for every method: ``batch_size // 2``."""
        return self.batch_size // 2

    def unlabeled_batch(self) -> int:
        return 0 if self.method == "supervised" else self.batch_size - self.labeled_batch()


#: Inference default (predict, the Python API, Slicer's Apply): the unprompted result's boxes prompt
#: the decoders for the final mask (see benchmarks/results for the measured difference).
SELF_PROMPT_DEFAULT = True
#: Inference option (predict, the Python API): also predict each slice mirrored left-right and average
#: both orientations (twice the encoder passes). Off: +1.8 DSC on BUSI val, but 1.6-5 points lost on
#: Hippocampus, whose classes (anterior / posterior) a mirror swaps (benchmarks/results/mirror_session14).
MIRROR_DEFAULT = False
#: ``cpcsam demo`` predicts mirrored too: breast-ultrasound lesions have no side, and over three demo
#: models it gained +2.3 [+0.1, +4.8] DSC on 86 BUSI val images (benchmarks/results/demo_session16).
DEMO_MIRROR = True

#: ``cpcsam demo``: 7 minutes on CPU (frozen encoder; the labeled views follow the general rule: 16 per
#: image for its 10 labeled images). The only other defaults.
DEMO_DEFAULTS: Dict[str, Any] = {
    "batch_size": 4, "freeze_encoder": True, "tune_neck": True, "supervised_warmup": 0.5, "lr": 2e-3,
    "val_every": 10, "save_every": 50, "max_minutes": 7.0, "overwrite": True,
}


def _check_field(f: dataclasses.Field, value: Any) -> Optional[str]:
    meta = f.metadata
    kind = meta["kind"]
    if value is None:
        return None if meta["optional"] else "must be given"
    if meta["nargs"]:
        if not isinstance(value, (list, tuple)) or len(value) != meta["nargs"]:
            return f"must be a list of {meta['nargs']} {kind.__name__} values"
        items = list(value)
    else:
        items = [value]
    for item in items:
        ok = isinstance(item, kind) and not (kind is not bool and isinstance(item, bool))
        if kind is float and isinstance(item, int) and not isinstance(item, bool):
            ok = True
        if not ok:
            return f"must be {'true or false' if kind is bool else 'a ' + kind.__name__}"
        if kind is float and not math.isfinite(item):
            return "must be a finite number"
    if meta["choices"] and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    if meta["check"] is not None:
        return meta["check"](list(value) if meta["nargs"] else value)
    return None


# ---- command line ------------------------------------------------------------------------------
_GROUPS = {"model": "model", "training": "training", "data": "data", "output": "validation and output",
           "machine": "machine"}


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return " (default: on)" if value else " (default: off)"
    if isinstance(value, list):
        return f" (default: {' '.join(map(str, value))})"
    return f" (default: {value})"


def add_train_arguments(parser: argparse.ArgumentParser, **default_overrides: Any) -> None:
    """Adds one option per TrainConfig field. ``default_overrides`` (field names) are this command's
    defaults; they are checked like any value. Parse results go through :func:`config_from_args`."""
    base = TrainConfig()
    unknown = set(default_overrides) - set(base.to_dict())
    if unknown:
        raise ValueError(f"unknown TrainConfig fields in default overrides: {sorted(unknown)}")
    defaults = dataclasses.replace(base, **default_overrides)
    defaults.validate("built-in defaults")
    groups: Dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(
            meta["group"], parser.add_argument_group(_GROUPS[meta["group"]]))
        value = getattr(defaults, f.name)
        help_text = meta["help"] + _default_text(value)
        kwargs: Dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if meta["kind"] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta["kind"]
            if meta["nargs"]:
                kwargs["nargs"] = meta["nargs"]
            if meta["choices"]:
                kwargs["metavar"] = "{" + ",".join(map(str, meta["choices"])) + "}"
            elif meta["metavar"]:
                kwargs["metavar"] = meta["metavar"]
        group.add_argument(meta["flag"], **kwargs)
    parser.set_defaults(_train_defaults=dict(default_overrides))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="JOB.json", help="training options as a JSON object of option names "
                        "(e.g. {\"iterations\": 500, \"freeze_encoder\": true}); flags given here override it")


def load_job_file(path: str | Path) -> Dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--config: cannot read {path} ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"--config: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"--config: {path} must hold a JSON object of option names")
    return data


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the command's overrides < ``--config`` job file < flags given explicitly."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values: Dict[str, Any] = dict(getattr(args, "_train_defaults", {}))
    job = getattr(args, "config", None)
    if job:
        data = load_job_file(job)
        TrainConfig.from_dict(data, source=f"--config {job}")  # names and values checked against the file
        values.update(data)
    for name in names:
        if hasattr(args, name):
            value = getattr(args, name)
            values[name] = list(value) if isinstance(value, tuple) else value
    cfg = TrainConfig(**values)
    cfg.validate()
    return cfg
