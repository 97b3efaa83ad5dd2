"""The CMake rules that install CPCSAMLib with the extension install every file of the package.

The ``file(GLOB ...)``, ``file(GLOB_RECURSE ...)`` and ``list(FILTER ...)`` commands of
``CPCSAM/CMakeLists.txt`` that build the lists given to ``ctkMacroCompilePythonScript`` are run by
the real ``cmake -P`` (not re-implemented), on the repository and on a scratch copy that has a new
subpackage, and the lists they produce are compared with the files of the package.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CMAKE = shutil.which("cmake")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="cmake is not installed (needed to evaluate the rules)")

SCRIPTS_VAR = "CPCSAMLib_PYTHON_SCRIPTS"
RESOURCES_VAR = "CPCSAMLib_PYTHON_RESOURCES"


def _commands(text: str, names=("file", "list")):
    """Top-level ``name( ... )`` commands of a CMake file, with balanced parentheses and quotes."""
    out = []
    for match in re.finditer(r"(?m)^\s*(" + "|".join(names) + r")\s*\(", text):
        depth, i, quoted = 1, match.end(), False
        while depth:
            ch = text[i]
            if ch == '"' and text[i - 1] != "\\":
                quoted = not quoted
            elif not quoted and ch == "(":
                depth += 1
            elif not quoted and ch == ")":
                depth -= 1
            i += 1
        out.append(text[match.start():i].strip())
    return out


def _install_rules(repo_root: Path):
    text = (repo_root / "CPCSAM" / "CMakeLists.txt").read_text(encoding="utf-8")
    rules = [c for c in _commands(text) if SCRIPTS_VAR in c or RESOURCES_VAR in c]
    assert any(c.startswith("file(") and SCRIPTS_VAR in c for c in rules), "no rule builds the script list"
    assert any(c.startswith("file(") and RESOURCES_VAR in c for c in rules), "no rule builds the resources"
    # the lists built by these rules are the ones handed to the CTK macro that installs them
    assert f'SCRIPTS "${{{SCRIPTS_VAR}}}"' in text and f'RESOURCES "${{{RESOURCES_VAR}}}"' in text
    assert "SOURCE_DIR ${CPCSAM_TOPLEVEL_DIR}" in text and "NO_INSTALL_SUBDIR" in text
    return rules


def _evaluate(rules, toplevel: Path, tmp_path: Path):
    """Run the rules with ``cmake -P``; return (scripts, resources) as sets of relative paths."""
    script = tmp_path / "rules.cmake"
    lines = [f'set(CPCSAM_TOPLEVEL_DIR "{toplevel.as_posix()}")', *rules]
    for var in (SCRIPTS_VAR, RESOURCES_VAR):
        lines.append(f'foreach(f IN LISTS {var})\n  message(STATUS "{var}|${{f}}")\nendforeach()')
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = subprocess.run([CMAKE, "-P", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = {SCRIPTS_VAR: set(), RESOURCES_VAR: set()}
    for line in (result.stdout + result.stderr).splitlines():
        line = line.strip().removeprefix("-- ")
        var, sep, path = line.partition("|")
        if sep and var in found:
            found[var].add(path)
    return found[SCRIPTS_VAR], found[RESOURCES_VAR]


def _package_files(toplevel: Path):
    files = {p.relative_to(toplevel).as_posix() for p in (toplevel / "CPCSAMLib").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    return {f for f in files if f.endswith(".py")}, {f for f in files if not f.endswith(".py")}


def test_cmake_installs_every_file_of_the_package(repo_root, tmp_path):
    scripts, resources = _evaluate(_install_rules(repo_root), repo_root, tmp_path)
    python_files, other_files = _package_files(repo_root)
    assert "CPCSAMLib/slicer/mrml.py" in python_files and "CPCSAMLib/modeling/__init__.py" in python_files
    assert scripts == python_files, (f"not installed: {sorted(python_files - scripts)}; "
                                     f"installed but not in the package: {sorted(scripts - python_files)}")
    assert resources == other_files, (f"data files not installed: {sorted(other_files - resources)}; "
                                      f"extra: {sorted(resources - other_files)}")


def test_a_new_subpackage_is_installed_without_editing_cmake(repo_root, tmp_path):
    """A scratch copy of the package with a new, nested subpackage: the same rules pick it up."""
    copy = tmp_path / "tree"
    shutil.copytree(repo_root / "CPCSAMLib", copy / "CPCSAMLib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    new = copy / "CPCSAMLib" / "newpart" / "deeper"
    new.mkdir(parents=True)
    for path in (new.parent / "__init__.py", new / "__init__.py", new / "thing.py"):
        path.write_text("X = 1\n", encoding="utf-8")
    (copy / "CPCSAMLib" / "newpart" / "__pycache__").mkdir()
    (copy / "CPCSAMLib" / "newpart" / "__pycache__" / "stale.cpython-312.py").write_text("", encoding="utf-8")
    scripts, _ = _evaluate(_install_rules(repo_root), copy, tmp_path)
    assert {"CPCSAMLib/newpart/__init__.py", "CPCSAMLib/newpart/deeper/__init__.py",
            "CPCSAMLib/newpart/deeper/thing.py"} <= scripts
    assert not any("__pycache__" in s for s in scripts)
    assert scripts == _package_files(copy)[0]


def test_the_engine_never_imports_the_slicer_side(repo_root):
    """``CPCSAMLib.slicer`` serves Slicer; no engine module imports it (checked on the source)."""
    import ast

    offenders = []
    for path in (repo_root / "CPCSAMLib").rglob("*.py"):
        if "slicer" in path.relative_to(repo_root / "CPCSAMLib").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")] + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n.lstrip(".").startswith("slicer") and (n.startswith(".") or n == "slicer") or
                   n.startswith("CPCSAMLib.slicer") for n in names):
                offenders.append(str(path.relative_to(repo_root)))
    assert offenders == []
