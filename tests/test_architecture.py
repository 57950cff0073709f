"""The package layout keeps its promises: imports point down, and one module owns DeepSpeed.

    core  <-  data  <-  train  <-  pipeline  <-  commands
      ^                              |
      +-------  regress  <-----------+

Every import is read from the source (module level and inside functions), so a lazy import
cannot hide an upward edge.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "regmix_ds"
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "regress": {"core", "regress"},
    "train": {"core", "data", "train"},
    "pipeline": {"core", "data", "train", "regress", "pipeline"},
    "commands": {"core", "data", "train", "regress", "pipeline", "commands", ""},
    "": {"commands", ""},  # regmix_ds/__init__.py and __main__.py
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(module: Path) -> str:
    parts = module.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def imported_modules(module: Path) -> list[str]:
    """Every module name `module` imports, absolute (`regmix_ds.core.files`), at any depth of the file."""
    names = []
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: relative import"
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def regmix_layer(name: str) -> str | None:
    """The layer an imported name belongs to ('' for `regmix_ds` itself), or None outside the package."""
    parts = name.split(".")
    if parts[0] != "regmix_ds":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def test_every_module_sits_in_a_known_layer():
    assert {layer_of(m) for m in modules()} == set(ALLOWED)


@pytest.mark.parametrize("module", modules(), ids=lambda m: str(m.relative_to(PACKAGE)))
def test_imports_point_down(module):
    layer = layer_of(module)
    upward = sorted({name for name in imported_modules(module)
                     if (target := regmix_layer(name)) is not None and target not in ALLOWED[layer]})
    assert not upward, f"{module.relative_to(PACKAGE)} ({layer or 'top'}) imports {upward}"


def test_only_the_engine_imports_deepspeed():
    importers = sorted(str(m.relative_to(PACKAGE)) for m in modules()
                       if any(name.split(".")[0] == "deepspeed" for name in imported_modules(m)))
    assert importers == ["train/engine.py"]
