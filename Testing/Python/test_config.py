"""The one training-options schema: one flag, one default and one validation per option."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from CPCSAMLib.config import DEMO_DEFAULTS, METHODS, TrainConfig, add_train_arguments, config_from_args
from CPCSAMLib.errors import InputError

FIELDS = dataclasses.fields(TrainConfig)
REPO = Path(__file__).resolve().parents[2]


def _parser(**overrides) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_train_arguments(p, **overrides)
    return p


def _cli_parser():
    from CPCSAMLib.cli import build_parser

    return build_parser()


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = _cli_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "demo"])
def test_every_field_has_exactly_one_flag_in_the_generated_parsers(command):
    actions = [a for a in _subparser(command)._actions if a.dest in {f.name for f in FIELDS}]
    by_dest = {}
    for a in actions:
        by_dest.setdefault(a.dest, []).append(a)
    assert set(by_dest) == {f.name for f in FIELDS}
    for f in FIELDS:
        (action,) = by_dest[f.name]
        long_flags = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        assert long_flags == [f.metadata["flag"]], f.name
    flags = [f.metadata["flag"] for f in FIELDS]
    assert len(flags) == len(set(flags))


def test_parser_defaults_are_the_dataclass_defaults():
    args = _subparser("train").parse_args(["--manifest", "m", "--output", "o"])
    assert config_from_args(args) == TrainConfig()
    demo = _subparser("demo").parse_args([])
    assert config_from_args(demo) == TrainConfig(**DEMO_DEFAULTS)
    for name, value in DEMO_DEFAULTS.items():  # an override that equals the default is a second default
        assert getattr(TrainConfig(), name) != value, name


def test_the_help_states_each_default_once_from_the_schema():
    text = " ".join(_subparser("demo").format_help().split())
    assert "peak learning rate (AdamW) (default: 0.002)" in text  # the demo's override, stated once
    assert "(default: 10000)" in " ".join(_subparser("train").format_help().split())


def test_no_other_engine_file_spells_a_training_flag_or_restates_defaults():
    flags = {f.metadata["flag"] for f in FIELDS}
    # predict's own options: inference settings of the same name, not training options
    allowed = {"CPCSAMLib/cli.py": {"--axis", "--device", "--sam-checkpoint", "--overwrite"}}
    offenders = []
    for path in list((REPO / "CPCSAMLib").rglob("*.py")) + list((REPO / "benchmarks").rglob("*.py")):
        if path.name == "config.py" or "results" in path.relative_to(REPO).parts:  # results: records of past runs
            continue
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"add_argument\(\s*[\"'](--[a-z0-9-]+)", text):
            if m.group(1) in flags and m.group(1) not in allowed.get(str(path.relative_to(REPO)), ()):
                offenders.append(f"{path.relative_to(REPO)}: {m.group(1)}")
        for m in re.finditer(r"TrainConfig\(([a-z_]+)=", text):
            offenders.append(f"{path.relative_to(REPO)}: TrainConfig({m.group(1)}=...)")
    assert not offenders, offenders


def test_from_dict_round_trip_and_rejections():
    cfg = TrainConfig.from_dict({"iterations": 50, "freeze_encoder": True, "percentiles": [1, 99]})
    assert cfg.iterations == 50 and cfg.freeze_encoder and cfg.percentiles == [1, 99]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    bad = [({"iterationz": 5}, "iterationz"),
           ({"freeze_encoder": "true"}, "--freeze-encoder"),  # JSON types only
           ({"iterations": 0}, "--iterations"),
           ({"iterations": 2.5}, "--iterations"),
           ({"iterations": True}, "--iterations"),
           ({"method": "fixmatch"}, "--method"),
           ({"lr_decay": "cosine"}, "--lr-decay"),
           ({"supervised_warmup": 1.5}, "--supervised-warmup"),
           ({"percentiles": [99, 1]}, "--percentiles"),
           ({"cache_views": 0}, "--cache-views"),
           ({"batch_size": 1}, "--batch-size"),
           ({"lr": float("nan")}, "--lr"),
           ({"update": "sequential", "freeze_encoder": True}, "--freeze-encoder"),
           ({"pseudo_label_threshold": 1.0}, "--pseudo-label-threshold"),
           ({"pseudo_label_threshold": 0}, "--pseudo-label-threshold"),
           ({"resume": True, "overwrite": True}, "--overwrite")]
    for data, word in bad:
        with pytest.raises(InputError, match=re.escape(word)):
            TrainConfig.from_dict(data)


def test_the_command_line_is_validated_by_the_same_field_checks():
    p = _parser()
    for argv, data in ((["--iterations", "0"], {"iterations": 0}),
                       (["--method", "fixmatch"], {"method": "fixmatch"}),
                       (["--supervised-warmup", "2"], {"supervised_warmup": 2.0})):
        with pytest.raises(InputError) as from_cli:
            config_from_args(p.parse_args(argv))
        with pytest.raises(InputError) as from_json:
            TrainConfig.from_dict(data)
        assert str(from_cli.value) == str(from_json.value).split(": ", 1)[1]


def test_sequential_update_with_frozen_encoder_is_an_error_not_ignored():
    with pytest.raises(InputError, match="sequential"):
        config_from_args(_parser().parse_args(["--update", "sequential", "--freeze-encoder"]))


def test_unlabeled_losses_off_the_encoder_needs_the_combined_update():
    assert config_from_args(_parser().parse_args(["--no-unlabeled-trains-encoder"])).unlabeled_trains_encoder is False
    assert config_from_args(_parser().parse_args([])).unlabeled_trains_encoder is True
    with pytest.raises(InputError, match="unlabeled-trains-encoder needs --update combined"):
        config_from_args(_parser().parse_args(["--update", "sequential", "--no-unlabeled-trains-encoder"]))


def test_job_file_then_explicit_flags(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"iterations": 500, "freeze_encoder": True, "lr": 0.002}))
    cfg = config_from_args(_parser().parse_args(["--config", str(job), "--iterations", "7", "--no-freeze-encoder"]))
    assert (cfg.iterations, cfg.freeze_encoder, cfg.lr) == (7, False, 0.002)
    demo = config_from_args(_parser(**DEMO_DEFAULTS).parse_args(["--config", str(job)]))
    assert demo.iterations == 500 and demo.batch_size == DEMO_DEFAULTS["batch_size"]
    job.write_text(json.dumps({"iterations": "500"}))
    with pytest.raises(InputError, match="job.json.*--iterations"):
        config_from_args(_parser().parse_args(["--config", str(job)]))
    job.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        config_from_args(_parser().parse_args(["--config", str(job)]))


def test_labeled_batch_is_half_for_every_method_and_auto_prompts():
    for method in METHODS:
        cfg = TrainConfig(method=method, batch_size=6)
        assert cfg.labeled_batch() == 3
        assert cfg.unlabeled_batch() == (0 if method == "supervised" else 3)
    assert TrainConfig().resolved_prompt_type() == "box"
    assert TrainConfig(backbone="sam_vit_b").resolved_prompt_type() == "point"
    assert TrainConfig(prompt_type="point").resolved_prompt_type() == "point"


def test_objective_methods_are_the_schema_choices():
    from CPCSAMLib import objective

    assert objective.METHODS is METHODS  # one spelling: objective imports it from config


def test_cli_and_evaluate_do_not_import_torch(tmp_path):
    code = ("import sys; from CPCSAMLib import cli; cli.build_parser().parse_args(['evaluate', '--pred', 'a', "
            "'--gt', 'b', '--output', 'c']); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'CPCSAMLib.training' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_schedule_warmup_decay_and_supervised_fraction():
    from CPCSAMLib.training.schedule import learning_rate, supervised_iterations, warmup_length

    cfg = TrainConfig(iterations=10000, lr=1.0)
    assert warmup_length(cfg, 10000) == 250 and warmup_length(cfg, 1000) == 50
    assert learning_rate(cfg, 0, 1000) == pytest.approx(1 / 50)
    assert learning_rate(cfg, 49, 1000) == pytest.approx(1.0)
    assert learning_rate(cfg, 999, 1000) == pytest.approx((1 / 950) ** 0.9)
    assert learning_rate(cfg, 1000, 1000) == 0.0  # poly reaches 0 at the horizon
    assert learning_rate(cfg.replace(lr_decay="constant"), 700, 1000) == 1.0
    exp = cfg.replace(lr_decay="exp", warmup_iters=0)
    assert learning_rate(exp, 1000, 1000) == pytest.approx(0.01)
    assert supervised_iterations(cfg, 1000) == 100 and supervised_iterations(cfg, 2) == 0


def test_horizon_is_sized_from_the_measured_step_time():
    from CPCSAMLib.training.schedule import HorizonEstimator

    cfg = TrainConfig(iterations=10000, max_minutes=10.0)
    h = HorizonEstimator(cfg, start_time=0.0, start_iteration=0, timed=3)
    assert h.after_iteration(1, now=60.0) is None  # first iteration: not timed
    assert h.after_iteration(2, now=62.0) is None and h.after_iteration(3, now=64.0) is None
    event = h.after_iteration(4, now=66.0)  # 2 s per iteration, 534 s left -> 267 more
    assert event == {"iteration": 4, "horizon": 271, "seconds_per_iteration": 2.0} and h.horizon == 271
    assert h.after_iteration(5, now=68.0) is None
    # the supervised warm-up (10 % of 271: 27 iterations) is cheaper: measured again after it
    assert all(h.after_iteration(i, now=68.0 + 2 * (i - 5)) is None for i in range(6, 28))
    assert h.after_iteration(28, now=200.0) is None  # the first step with unlabeled images starts the clock
    assert h.after_iteration(30, now=208.0) is None
    again = h.after_iteration(31, now=212.0)  # 4 s per iteration, 388 s left -> 97 more
    assert again == {"iteration": 31, "horizon": 128, "seconds_per_iteration": 4.0} and h.horizon == 128
    assert h.after_iteration(32, now=216.0) is None
    assert h.supervised_end == 27
    # then again after each further 10 % of the budget (60 s), from the iterations since the last
    assert h.after_iteration(45, now=271.0) is None
    refresh = h.after_iteration(46, now=272.0)  # 15 iterations in 60 s: 4 s, 328 s left -> 82 more
    assert refresh == {"iteration": 46, "horizon": 128, "seconds_per_iteration": 4.0}
    slower = h.after_iteration(52, now=332.0)  # the machine got busy: 10 s, 268 s left -> 26 more
    assert slower == {"iteration": 52, "horizon": 78, "seconds_per_iteration": 10.0} and h.horizon == 78
    faster = h.after_iteration(112, now=392.0)  # idle again: 1 s, 208 s left -> 208 more
    assert faster["horizon"] == 320 and h.supervised_end == 27  # the warm-up does not come back
    labeled_only = HorizonEstimator(TrainConfig(iterations=10000, max_minutes=10.0, method="supervised"), 0.0, 0)
    for i, t in ((1, 60.0), (2, 62.0), (3, 64.0)):
        labeled_only.after_iteration(i, now=t)
    assert labeled_only.after_iteration(4, now=66.0)["horizon"] == 271
    assert labeled_only.after_iteration(40, now=100.0) is None  # no warm-up to measure again; 60 s not passed
    fixed = HorizonEstimator(TrainConfig(iterations=50), 0.0, 0)
    assert fixed.after_iteration(4, now=1.0) is None and fixed.horizon == 50


def test_horizon_counts_the_dearer_unlabeled_steps_during_the_warm_up():
    from CPCSAMLib.training.schedule import HorizonEstimator

    def warm_up_share(extra):
        """Simulated clock: labeled-only steps 2 s, steps with unlabeled images 2 s + 2 s; 600 s budget."""
        h = HorizonEstimator(TrainConfig(iterations=10000, max_minutes=10.0, supervised_warmup=0.5), 0.0, 0)
        assert h.wants_unlabeled_cost(0)
        h.unlabeled_extra = extra
        now, it = 60.0, 0
        while now < 600.0 and it < h.horizon:
            it += 1
            h.after_iteration(it, now=now)
            now += 2.0 if it < h.supervised_end else 4.0
        return h, it

    h, ran = warm_up_share(2.0)
    # first measurement at iteration 4 (66 s): (534 s + 4 x 2 s) / (2 s + 0.5 x 2 s) -> 180, half of it labeled-only
    assert h.supervised_end == 90 and h.horizon == 180 and 178 <= ran <= 181
    old, ran_old = warm_up_share(None)  # unknown extra cost: the warm-up is timed as if every step cost 2 s
    assert old.supervised_end == 135 and ran_old < 210  # two thirds of the run labeled-only
    tiny = HorizonEstimator(TrainConfig(iterations=10000, max_minutes=10.0, supervised_warmup=0.01), 0.0, 0)
    tiny.unlabeled_extra = 2.0
    for i, t in ((1, 60.0), (2, 62.0), (3, 64.0)):
        tiny.after_iteration(i, now=t)
    assert tiny.after_iteration(4, now=66.0)["horizon"] == 4 + 133  # the warm-up is over: 534 s at 4 s a step
    assert not HorizonEstimator(TrainConfig(max_minutes=1.0, method="supervised"), 0.0, 0).wants_unlabeled_cost(0)
    assert not HorizonEstimator(TrainConfig(iterations=100), 0.0, 0).wants_unlabeled_cost(0)
    assert not HorizonEstimator(TrainConfig(max_minutes=1.0, supervised_warmup=0.0), 0.0, 0).wants_unlabeled_cost(0)


def test_timing_a_step_leaves_weights_gradients_and_optimiser_untouched():
    import numpy as np
    import torch

    from CPCSAMLib.training.step import TrainStep

    layer = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in layer.parameters()]
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1.0)
    seen = []

    def module(xl, yl, xu, rng, supervised_only):
        seen.append(supervised_only)
        return {"loss": layer(xl).sum() + (0 if supervised_only else layer(xu).sum())}

    step = TrainStep(None, module, optimizer, torch.device("cpu"), None, sequential=False)
    x = torch.ones(2, 3)
    assert step.time_forward_backward(x, None, x, np.random.default_rng(0), False) > 0
    assert step.time_forward_backward(x, None, x, np.random.default_rng(0), True) > 0
    assert seen == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert all(p.grad is None for p in layer.parameters()) and not optimizer.state


def test_cli_train_with_a_bad_job_file_is_refused_before_anything_is_loaded(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"update": "sequential", "freeze_encoder": True}))
    events = tmp_path / "events.jsonl"
    r = subprocess.run([sys.executable, "-m", "CPCSAMLib", "train", "--manifest", str(tmp_path / "m.json"),
                        "--output", str(tmp_path / "out"), "--config", str(job), "--events", str(events)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"cpcsam: error: --config {job}: --update sequential runs the encoder in every round and cannot be used "
        "with --freeze-encoder; use --update combined"]
    assert json.loads(events.read_text().splitlines()[-1])["event"] == "error"
    assert not (tmp_path / "out").exists()


def test_without_augmentation_frozen_mode_caches_one_view():
    """--no-augment with --freeze-encoder: the cached views beyond the first were augmented copies;
    without augmentation they are one view (before, the option was silently ignored there)."""
    cfg = TrainConfig(cache_views=4, cache_views_unlabeled=3)
    assert cfg.labeled_views(10) == 4 and cfg.unlabeled_views() == 3
    off = TrainConfig(cache_views=4, cache_views_unlabeled=3, augment=False)
    assert off.labeled_views(10) == 1 and off.unlabeled_views() == 1
    assert TrainConfig(augment=False).labeled_views(10) == 1


def test_the_demo_predicts_mirrored_by_default_and_predict_does_not():
    from CPCSAMLib.config import DEMO_MIRROR, MIRROR_DEFAULT

    assert _subparser("demo").parse_args([]).mirror is DEMO_MIRROR is True
    assert _subparser("demo").parse_args(["--no-mirror"]).mirror is False
    args = _subparser("predict").parse_args(["--model", "m", "--input", "i", "--output", "o"])
    assert args.mirror is MIRROR_DEFAULT is False
    assert "(twice the encoder passes; default: on)" in " ".join(_subparser("demo").format_help().split())
