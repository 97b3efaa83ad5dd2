"""The engine's train/predict path imports no Unix-only module (Slicer on Windows runs it).

A real subprocess where importing ``resource`` (Unix only) raises, as on Windows: the CLI is
imported and its parser built, ``train --help`` and ``predict --help`` run, and the training and
inference modules are imported; then ``resource`` must not be in ``sys.modules``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    r"""
    import contextlib, importlib, importlib.abc, io, sys

    class NoUnixOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "resource":
                raise ImportError("No module named 'resource' (Windows)")
            return None

    sys.modules.pop("resource", None)
    sys.meta_path.insert(0, NoUnixOnly())

    import CPCSAMLib.cli as cli
    parser = cli.build_parser()
    for command in (["train", "--help"], ["predict", "--help"]):
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main(command)
            except SystemExit as exc:
                assert exc.code in (0, None), (command, exc.code)
    found = []
    for name in ("CPCSAMLib.training", "CPCSAMLib.train", "CPCSAMLib.infer", "CPCSAMLib.runtime"):
        try:
            importlib.import_module(name)
            found.append(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    assert "CPCSAMLib.infer" in found and ("CPCSAMLib.training" in found or "CPCSAMLib.train" in found), found
    assert "resource" not in sys.modules
    print("OK", found)
    """
)


def test_train_and_predict_path_never_imports_resource(repo_root):
    env = dict(os.environ, PYTHONPATH=str(repo_root), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env,
                            cwd=str(repo_root), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")
