"""The package's layout is its architecture: folders are the concerns, imports only go down the
layers, no module imports an entry point, and no import cycle exists."""
import ast
import pathlib

import pytest

from helpers import REPO

PACKAGE = pathlib.Path(REPO) / "vit_jax"
ENTRY_POINTS = {"train", "evaluate", "convert", "bench", "data_bench", "sweep", "report"}
# What each folder (and the shared cli module) may import from the package, lowest layers first.
ALLOWED = {
    "config": set(),
    "runtime": set(),
    "models": set(),
    "data": {"config"},
    "checkpoints": {"models"},
    "evaluators": {"data"},
    "training": {"config", "runtime", "models", "data", "checkpoints", "evaluators"},
    "efficiency": {"config", "runtime", "models", "data", "training"},
    "study": {"config", "checkpoints", "efficiency"},
    "cli": {"config", "runtime"},
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """The vit_jax modules `path` imports (`from vit_jax.a import b` counts as vit_jax.a.b if b is
  a module, else vit_jax.a)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("vit_jax")}
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vit_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        exists = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
            PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").exists()
        found.add(candidate if exists else node.module)
  return found


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _concern(module: str) -> str:
  return module.split(".")[1] if module.count(".") else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _concern(m) in ALLOWED))
def test_imports_only_go_down_the_layers(module):
  concern = _concern(module)
  upward = sorted(m for m in MODULES[module]
                  if _concern(m) not in ALLOWED[concern] | {concern, ""})
  assert not upward, f"{module} ({concern}) imports {upward}; allowed: {sorted(ALLOWED[concern])}"


def test_every_module_sits_in_a_known_layer_or_is_an_entry_point():
  top_level = {_concern(m) for m in MODULES if m.count(".")}
  assert top_level <= set(ALLOWED) | ENTRY_POINTS, top_level - set(ALLOWED) - ENTRY_POINTS


def test_no_module_imports_an_entry_point():
  entries = {f"vit_jax.{name}" for name in ENTRY_POINTS}
  importers = sorted(m for m, imported in MODULES.items() if imported & entries)
  assert not importers


def test_models_never_import_checkpoints_and_there_is_no_import_cycle():
  assert not any(_concern(i) == "checkpoints" for m, imp in MODULES.items()
                 if _concern(m) == "models" for i in imp)
  visiting, done = set(), set()

  def visit(module, path):
    if module in done:
      return
    assert module not in visiting, f"import cycle: {' -> '.join(path + [module])}"
    visiting.add(module)
    for imported in MODULES.get(module, ()):
      visit(imported, path + [module])
    visiting.discard(module)
    done.add(module)

  for module in MODULES:
    visit(module, [])
