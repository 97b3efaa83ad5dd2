"""Tests of CPCSAMLib.checkpoint on real files: the card's one class list, atomic saving with the
umask's mode, and files that must never be loaded unsafely (real pickles that would run code)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from CPCSAMLib import checkpoint as ck
from CPCSAMLib.dataset import ClassInfo
from CPCSAMLib.errors import CheckpointError

CLASSES = [{"name": "lesion", "value": 255, "color": [1.0, 0.0, 0.0]}, {"name": "cyst", "value": 7}]


def _state():
    return {"decoder.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3)}


class _RunsCode:
    """Unpickling this calls exec(): it writes ``marker`` when (and only when) code runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def test_card_stores_only_classes_and_loads_with_derived_count(tmp_path):
    path = ck.save_checkpoint(tmp_path / "model_best.pt", _state(),
                              {"backbone": "litemedsam", "classes": CLASSES, "num_classes": 2})
    raw = json.loads(torch.load(path, weights_only=True)["model_card"])
    assert "num_classes" not in raw and raw["classes"] == CLASSES
    payload = ck.load_checkpoint(path)
    assert payload["model_card"]["num_classes"] == 2
    assert ck.card_classes(payload["model_card"], "m") == [
        ClassInfo("lesion", 255, (1.0, 0.0, 0.0)), ClassInfo("cyst", 7)]
    assert torch.equal(payload["state_dict"]["decoder.weight"], _state()["decoder.weight"])
    ck.check_compatible(payload["model_card"], path, backbone="litemedsam",
                        class_names=["lesion", "cyst"], num_classes=2)
    with pytest.raises(CheckpointError, match="2 classes"):
        ck.check_compatible(payload["model_card"], path, num_classes=3)
    assert sorted(os.listdir(tmp_path)) == ["model_best.pt"]


def test_card_whose_num_classes_disagrees_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="num_classes = 3 but lists 2 classes"):
        ck.save_checkpoint(tmp_path / "m.pt", _state(), {"classes": CLASSES, "num_classes": 3})
    assert os.listdir(tmp_path) == []
    # files written by the earlier writer (classes + num_classes in the card)
    old = {"format": ck.FORMAT, "state_dict": _state(),
           "model_card": json.dumps({"classes": CLASSES, "num_classes": 2})}
    torch.save(old, tmp_path / "old.pt")
    assert ck.load_checkpoint(tmp_path / "old.pt")["model_card"]["num_classes"] == 2
    torch.save({**old, "model_card": json.dumps({"classes": CLASSES, "num_classes": 1})},
               tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="edited.pt.*inconsistent"):
        ck.load_checkpoint(tmp_path / "edited.pt")
    torch.save({**old, "model_card": json.dumps({"classes": [{"name": "a", "value": 0}]})},
               tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="bad.pt.*background"):
        ck.load_checkpoint(tmp_path / "bad.pt")


def test_saved_checkpoint_respects_umask_and_keeps_old_file_on_failure(tmp_path):
    old = os.umask(0o022)
    try:
        path = ck.save_checkpoint(tmp_path / "model_last.pt", _state(), {"classes": CLASSES})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    before = path.read_bytes()
    with pytest.raises(Exception):
        ck.save_checkpoint(path, {"w": lambda: None}, {"classes": CLASSES})  # not picklable
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model_last.pt"]


@pytest.mark.parametrize("kind", ["torch_zip", "plain_pickle", "plain_pickle_v5"])
def test_file_that_would_run_code_is_refused_plainly(tmp_path, kind):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "model_best.pt"
    payload = {"format": ck.FORMAT, "model_card": json.dumps({"classes": CLASSES}),
               "state_dict": _state(), "extra": _RunsCode(marker)}
    if kind == "torch_zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=5 if kind.endswith("v5") else 2))
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint(evil)
    msg = str(info.value)
    assert "is not a plain-weights checkpoint" in msg and "Do not load it unsafely" in msg
    assert "weights_only" not in msg and len(msg.splitlines()) == 1
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not marker.exists()
    # the plain pickle does run code when loaded the unsafe way: the test file is real
    if kind.startswith("plain_pickle"):
        pickle.loads(evil.read_bytes())
        assert marker.read_text() == "code ran"


def test_damaged_file_is_not_called_malicious(tmp_path):
    good = ck.save_checkpoint(tmp_path / "good.pt", _state(), {"classes": CLASSES})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:200])
    (tmp_path / "text.pt").write_text("not a checkpoint at all")
    for name in ("cut.pt", "text.pt"):
        with pytest.raises(CheckpointError, match=f"{name} is not a readable CPC-SAM checkpoint: "
                                                  "the file is damaged"):
            ck.load_checkpoint(tmp_path / name)


def test_evaluate_with_a_malicious_model_file_in_a_real_process(busi_dir, tmp_path):
    """`cpcsam evaluate --model evil.pt` exits 2 with the plain message; no code runs."""
    marker = tmp_path / "marker.txt"
    torch.save({"format": ck.FORMAT, "model_card": json.dumps({"classes": CLASSES}),
                "state_dict": _state(), "extra": _RunsCode(marker)}, tmp_path / "evil.pt")
    mask = busi_dir / "masks" / "benign_006.png"
    proc = subprocess.run([sys.executable, "-m", "CPCSAMLib", "evaluate", "--pred", str(mask),
                           "--gt", str(mask), "--output", str(tmp_path / "out"),
                           "--model", str(tmp_path / "evil.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "evil.pt is not a plain-weights checkpoint" in proc.stderr
    assert "weights_only" not in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()
