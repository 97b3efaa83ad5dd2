"""``python -m benchmarks``: options and the order of the work."""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from typing import List, Optional

from CPCSAMLib.errors import Cancelled, InputError

from .common import log, machine_info, package_versions, write_json
from .data import LAYOUTS, UNLABELED_SUBSET_SEED, make_plan
from CPCSAMLib.config import add_train_arguments, config_from_args
from .runs import INFERENCE_MODES, TRAINED_METHODS, prepare_embedding_store, run_unit, unit_key

METHODS = TRAINED_METHODS + ("zeroshot",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Labeled-only vs CPC-SAM vs ablations vs zero-shot LiteMedSAM at one training budget, over "
                    "several seeds, with paired per-case statistics; optionally the engine's speed. Every "
                    "(method, labeled list, seed) is a unit with its own result file: rerunning the same command "
                    "continues where it stopped.")
    group = parser.add_argument_group("data")
    group.add_argument("--data", required=True, help="dataset folder: images/, masks/ (BUSI) or labels/ "
                                                     "(Hippocampus), and split lists")
    group.add_argument("--dataset", choices=sorted(LAYOUTS), default=None,
                       help="dataset layout (default: busi if the folder has masks/, hippocampus if labels/)")
    group.add_argument("--train-list", default="train.txt", help="labeled + unlabeled candidates (default train.txt)")
    group.add_argument("--labeled-list", nargs="+", default=None,
                       help="labeled subset(s) of the train list (default: busi labeled_10.txt; hippocampus "
                            "labeled_1.txt labeled_3.txt)")
    group.add_argument("--unlabeled-limit", type=int, default=None, metavar="N",
                       help="use N unlabeled cases of the train list, drawn with a fixed seed (default: busi all, "
                            "hippocampus 20)")
    group.add_argument("--test-list", default="val.txt", help="cases that are scored (default val.txt)")
    group.add_argument("--val-list", default=None, help="validation list for the curves (default: none)")
    group.add_argument("--max-test", type=int, default=None, metavar="K", help="score only the first K test cases")
    group = parser.add_argument_group("comparison")
    group.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                       help="supervised (labeled only), cpcsam, cross_prompting (no prompt consistency), cps (no "
                            "prompts), zeroshot (LiteMedSAM's original weights); default all")
    group.add_argument("--seeds", nargs="+", type=int, default=None, help="one run per seed and method (default: "
                                                                          "the --seed value)")
    group.add_argument("--inference", nargs="+", choices=INFERENCE_MODES, default=["unprompted"],
                       help="how the trained models predict: unprompted, self_prompt (default unprompted)")
    group.add_argument("--checkpoint", choices=("last", "best"), default="last",
                       help="the model that is scored: last (default) or best validation Dice (needs --val-list)")
    add_train_arguments(parser, batch_size=4)
    group = parser.add_argument_group("speed (off unless asked for)")
    group.add_argument("--speed", action="store_true", help="measure the engine's step against the official "
                                                            "structure and inference speed")
    group.add_argument("--speed-only", action="store_true", help="only the speed measurements")
    group.add_argument("--speed-repeats", type=int, default=3, help="timed steps per measurement (median)")
    group.add_argument("--speed-warmup", type=int, default=1, help="untimed steps first")
    group.add_argument("--explore", nargs="+", default=["none"], choices=("all", "none") + _explorations(),
                       help="exploration rows with --speed (default none)")
    group.add_argument("--worker-timeout", type=float, default=900.0, help="seconds for one speed measurement")
    group = parser.add_argument_group("output")
    group.add_argument("--output", default="benchmark_output", help="output folder (default ./benchmark_output)")
    group.add_argument("--force", action="store_true", help="redo results that exist in the output folder")
    group.add_argument("--report-only", action="store_true", help="only rebuild report.md and the plots")
    return parser


def _explorations() -> tuple:
    from .speed import EXPLORATIONS

    return EXPLORATIONS


def _budget_text(config) -> str:
    parts = [f"{config.iterations} iterations"]
    if config.max_minutes:
        parts.append(f"at most {config.max_minutes:g} minutes")
    return "budget per run: " + ", ".join(parts)


def _run_record(args, plan, config, seeds: List[int]) -> dict:
    return {
        "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "dataset": plan.layout.name, "dataset_description": plan.layout.description, "data": str(plan.root),
        "class_names": plan.layout.class_names, "distance_unit": plan.layout.distance_unit,
        "train_list": plan.train_list, "num_train": len(plan.train),
        "labeled": {stem: {"file": plan.labeled_files[stem], "labeled": len(plan.labeled[stem]),
                           "unlabeled": len(plan.unlabeled[stem]), "candidates": plan.unlabeled_candidates[stem],
                           "unlabeled_names": plan.unlabeled[stem]} for stem in plan.labeled},
        "unlabeled_limit": plan.unlabeled_limit, "unlabeled_subset_seed": UNLABELED_SUBSET_SEED,
        "test_list": plan.test_list, "test_cases": len(plan.test), "test_total": plan.test_total,
        "val_list": plan.val_list, "checkpoint": args.checkpoint, "seeds": seeds, "methods": args.methods,
        "inference": args.inference, "config": dataclasses.asdict(config), "budget_text": _budget_text(config),
        "machine": machine_info(), "versions": package_versions(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")},
    }


def run(args) -> int:
    from .report import write_report

    plan = make_plan(args)
    plan.output.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        print(write_report(plan.output))
        return 0
    if args.checkpoint == "best" and not args.val_list:
        raise InputError("--checkpoint best needs --val-list")
    if args.speed_repeats < 1 or args.speed_warmup < 0:
        raise InputError("--speed-repeats must be >= 1 and --speed-warmup >= 0")
    config = config_from_args(args)
    seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else [config.seed]))
    write_json(plan.output / "results" / "run.json", _run_record(args, plan, config, seeds))
    failures: List[str] = []
    if args.speed or args.speed_only:
        from .speed import run_speed

        run_speed(argparse.Namespace(**{**vars(args), **config.to_dict()}), plan)  # training options resolved
        write_report(plan.output)
    if not args.speed_only:
        if "zeroshot" in args.methods:
            from .zeroshot import run_zeroshot

            try:
                run_zeroshot(plan, config.device, config.precision, args.force)
            except Exception as exc:  # noqa: BLE001 - one method's failure must not lose the others
                log(f"zeroshot failed: {type(exc).__name__}: {exc}")
                failures.append("zeroshot")
            write_report(plan.output)
        trained = [m for m in TRAINED_METHODS if m in args.methods]
        if trained:
            prepare_embedding_store(config, plan, args.force, with_unlabeled=trained != ["supervised"])
        for stem in plan.labeled:
            for seed in seeds:
                for method in trained:
                    try:
                        run_unit(config, plan, method, stem, seed, args.inference, args.checkpoint, args.force)
                    except (InputError, Cancelled):
                        write_report(plan.output)
                        raise
                    except Exception as exc:  # noqa: BLE001 - one unit's failure must not lose the others
                        import traceback

                        traceback.print_exc()
                        log(f"{unit_key(method, stem, seed)} failed: {type(exc).__name__}: {exc}")
                        failures.append(unit_key(method, stem, seed))
                    write_report(plan.output)
    print(write_report(plan.output))
    if failures:
        print(f"benchmark: failed: {', '.join(failures)} (run the same command again to retry them)", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--worker":
        from .speed import worker_main

        return worker_main(argv[1])
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 130
