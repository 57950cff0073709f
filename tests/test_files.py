"""File helpers under fire (atomic writes survive SIGKILL), safe names, and a scan of the package
for anything that would run code out of a user's file."""
import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, read_yaml, write_json_atomic
from regmix_ds.core.names import check_safe_name

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "regmix_ds").rglob("*.py"), ROOT / "train.py"])


# ---- atomic writes under SIGKILL ------------------------------------------------------------------

REWRITER = """
import itertools, sys
from regmix_ds.core.files import write_json_atomic
path, start, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for generation in itertools.count(start):
    write_json_atomic(path, {"generation": generation, "payload": f"{generation};" * size})
"""
KILLS = [("open", 1), ("write", 1), ("write", 2), ("open", 3), ("write", 7), ("open", 12)]
"""(phase, n): kill a rewriter inside its n-th write, just after it created its temporary file
(`open`) or once that file is complete and synced but not yet renamed (`write`)."""


def killed_rewriter(path: Path, start: int, size: int, fault: str) -> None:
    """A child rewriting `path` with generation start, start+1, ... that SIGKILLs itself at `fault`."""
    child = subprocess.run([sys.executable, "-c", REWRITER, str(path), str(start), str(size)], cwd=ROOT,
                           env={**os.environ, "REGMIX_FAULT": fault}, capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, f"{fault}: exit {child.returncode}: {child.stderr[-2000:]}"


def test_sigkilled_json_rewrites_leave_the_old_or_the_new_file_never_a_torn_one(tmp_path):
    path, size = tmp_path / "result.json", 2_000_000
    generation = -1
    for phase, n in KILLS:
        start = generation + 1
        killed_rewriter(path, start, size, f"{phase} {path.name}@{n}")
        completed = n - 1  # writes that finished before the n-th one was killed
        if start == 0 and completed == 0:
            assert not path.exists()
        else:
            data = read_json(path)
            assert data["generation"] == (start + completed - 1 if completed else generation)
            assert data["payload"] == f"{data['generation']};" * size
            generation = data["generation"]
        leftovers = [p for p in tmp_path.iterdir() if p != path]
        # The kill landed inside a write: its temporary file is there, hidden and named as one:
        # empty just after it was created, complete (the next generation, never shown) before the rename.
        assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{path.name}.") and leftovers[0].suffix == ".tmp"
        if phase == "open":
            assert leftovers[0].stat().st_size == 0
        else:
            assert read_json(leftovers[0])["generation"] == start + completed
        leftovers[0].unlink()  # a killed writer cannot clean up after itself
    assert generation >= 0, "no write ever finished"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(path, {"old": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"new": object()})
    assert read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ---- names that become paths -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "x" * 129, "a b", "a\\b", "na\x00me", "~root", 3])
def test_unsafe_names_are_refused(name):
    with pytest.raises(RegmixError, match=r"^where: invalid domain name"):
        check_safe_name(name, "where", "domain name")


@pytest.mark.parametrize("name", ["pile_cc", "github", "the_pile.v2", "A-1", "x" * 128])
def test_safe_names_pass(name):
    assert check_safe_name(name, "where") == name


def test_yaml_never_builds_python_objects(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("work_dir: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RegmixError, match=r"not valid YAML"):
        read_yaml(path)
    assert not (tmp_path / "pwned").exists()


# ---- nothing in the package runs code out of a file ----------------------------------------------


CODE_RUNNING_MODULES = ("dill", "cloudpickle", "joblib", "marshal", "shelve")
CODE_RUNNING_CALLS = (
    "eval", "exec", "compile", "__import__", "os.system", "os.popen", "pickle.load", "pickle.loads", "pickle.Unpickler",
    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "pd.read_pickle", "pandas.read_pickle", "torch.jit.load",
)
LOADER_NAMES = ("load", "loads", "Unpickler", "unsafe_load", "full_load")


def is_constant(node: ast.AST | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_import(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [f"import {a.name}" for a in node.names if a.name.split(".")[0] in CODE_RUNNING_MODULES]
    module = node.module or ""
    if module.split(".")[0] in CODE_RUNNING_MODULES:
        return [f"import {module}"]
    if module in ("pickle", "torch", "yaml"):  # `from torch import load` would hide a torch.load call
        return [f"from {module} import {a.name}" for a in node.names if a.name in LOADER_NAMES]
    return []


def unsafe_call(node: ast.Call) -> list[str]:
    name = ast.unparse(node.func)
    keywords = {k.arg: k.value for k in node.keywords}
    found = [f"{name}(shell=...)"] if "shell" in keywords and not is_constant(keywords["shell"], False) else []
    if name in CODE_RUNNING_CALLS:
        found.append(name)
    elif name == "torch.load" and not is_constant(keywords.get("weights_only"), True):
        found.append("torch.load without weights_only=True")
    elif (name in ("np.load", "numpy.load") and "allow_pickle" in keywords
          and not is_constant(keywords["allow_pickle"], False)):
        found.append("np.load(allow_pickle=...)")
    return found


def unsafe_calls(source: str) -> list[str]:
    """What would execute code from data: eval/exec, pickle loading, yaml.load, torch.load without
    weights_only=True, shell=True, os.system."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found += unsafe_import(node)
        elif isinstance(node, ast.Call):
            found += unsafe_call(node)
    return found


def test_the_scan_finds_each_unsafe_call():
    bad = """
import pickle, yaml, torch, subprocess, os
from dill import loads
eval(text); exec(code); os.system(cmd); pickle.loads(raw); yaml.load(f, Loader=yaml.Loader)
torch.load(p); torch.load(p, weights_only=False); subprocess.run(cmd, shell=True); np.load(p, allow_pickle=True)
"""
    assert sorted(unsafe_calls(bad)) == sorted([
        "import dill", "eval", "exec", "os.system", "pickle.loads", "yaml.load", "torch.load without weights_only=True",
        "torch.load without weights_only=True", "subprocess.run(shell=...)", "np.load(allow_pickle=...)",
    ])
    good = ("torch.load(p, map_location='cpu', weights_only=True); yaml.safe_load(f); model.eval(); "
            "subprocess.run([a, b])")
    assert unsafe_calls(good) == []


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_source_file_runs_code_out_of_data(source):
    assert unsafe_calls(source.read_text()) == []
