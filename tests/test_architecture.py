"""The floor plan of docs/architecture.md, checked against every import under bootvae_jax/."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "bootvae_jax"

# The first path component under bootvae_jax/ (a package or a top-level module) -> its floor.
FLOORS = {
    "cli": 0,
    "core": 1,
    "ops": 1,
    "models": 2,
    "data": 2,
    "interop": 3,
    "losses": 3,
    "loading": 4,
    "training": 5,
    "inference": 5,
    "evaluation": 6,
    "configs": 6,
    "main": 7,
    "evaluate": 7,
    "export": 7,
    "aot": 7,
    "experiments": 7,
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: pathlib.Path) -> set[str]:
  """Every bootvae_jax module `path` imports, at any depth of the file."""
  found = set()
  package = ""  # the package relative imports start from
  if PACKAGE in path.parents:
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    )
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
            package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
        ).strip(".")
      found.add(base)
      found |= {f"{base}.{a.name}" for a in node.names}
  found = {name for name in found if name.startswith("bootvae_jax.")}
  # `from pkg import module` imports the module; pkg's __init__ only runs on the way.
  return {name for name in found if not any(other.startswith(name + ".") for other in found)}


def all_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor_of(module: str) -> tuple[str, int]:
  top = module.split(".")[1]
  return top, FLOORS[top]


def test_every_part_of_the_package_has_a_floor():
  tops = {m.split(".")[1] for m in all_modules() if m != "bootvae_jax"}
  assert tops <= set(FLOORS), f"no floor in docs/architecture.md for {sorted(tops - set(FLOORS))}"


def test_no_import_climbs_a_floor():
  modules = all_modules()
  climbs = []
  for name, path in modules.items():
    if name == "bootvae_jax":
      continue
    top, floor = floor_of(name)
    for target in imports_of(path):
      if target not in modules or target == "bootvae_jax":
        continue
      target_top, target_floor = floor_of(target)
      if target_top != top and target_floor >= floor:
        climbs.append(f"{name} (floor {floor}) -> {target} (floor {target_floor})")
  assert not climbs, "imports that climb or cross a floor:\n" + "\n".join(climbs)


def test_no_import_cycle():
  modules = all_modules()
  graph = {
      name: {t for t in imports_of(path) if t in modules and t != name}
      for name, path in modules.items()
  }
  for name in graph:  # a module importing its own package's __init__ is not a cycle
    graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == "open":
        cycles.append(stack[stack.index(target) :] + [target])
      elif target not in state:
        visit(target)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    "source", ["from bootvae_jax.models import layers", "import bootvae_jax.core.metrics"]
)
def test_the_import_reader_sees_imports_inside_functions(tmp_path, source):
  path = tmp_path / "m.py"
  path.write_text("def f():\n  " + source + "\n")
  assert any(name.startswith("bootvae_jax.") for name in imports_of(path))
