"""The package's parts and the one direction of imports between them, read from the source with ``ast``.

Every ``import`` counts, those inside functions too: an import deferred to keep start-up light is still a
dependency."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import dsh

SRC = Path(dsh.__file__).parent

# Lowest first. A module may import its own part and the parts of lower layers; parts in one layer know nothing
# of each other (data and models, for instance, are brought together by the training loop).
LAYERS = [
    {"errors"},
    {"utils"},
    {"codes"},
    {"index", "eval"},
    {"data", "models"},
    {"config"},
    {"runtime"},
    {"train"},
    {"serve"},
    {"cli"},
]
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, text: str | None = None) -> set[str]:
    """Absolute names of the dsh modules (or packages) that ``path`` (its source ``text``, default: the file's)
    imports."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dsh"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "dsh":
                continue
            found.add(target)
            # `from . import x` names a module where x is one
            found |= {f"{target}.{a.name}" for a in node.names
                      if (SRC.parent / Path(*f"{target}.{a.name}".split("."))).with_suffix(".py").exists()
                      or (SRC.parent / Path(*f"{target}.{a.name}".split("."))).is_dir()}
    return found


def part_of(module: str) -> str | None:
    """``dsh.index.flat`` -> ``index``; the root package itself (``dsh``, ``dsh.__main__``) -> None."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in {"__init__", "__main__"}:
        return None
    return parts[1]


def sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_module_belongs_to_a_part_and_imports():
    parts = {part_of(module_name(p)) for p in sources()} - {None}
    assert parts == set(LAYER_OF), f"parts without a layer, or layers without a part: {parts ^ set(LAYER_OF)}"
    names = [m.name for m in pkgutil.walk_packages(dsh.__path__, "dsh.")]
    assert len(names) == len(sources()) - 1  # every file but dsh/__init__.py
    for name in names:
        importlib.import_module(name)


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sources()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in sorted(graph.items()):
        mine = part_of(module)
        if mine is None:  # the root package re-exports the public names of the parts
            continue
        for target in sorted(targets):
            theirs = part_of(target)
            if theirs is None or theirs == mine:  # dsh.__version__, or its own part
                continue
            if LAYER_OF[theirs] >= LAYER_OF[mine]:
                wrong.append(f"{module} imports {target}")
    return wrong


def test_imports_go_one_way():
    wrong = layer_violations(import_graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_layer_check_sees_a_wrong_import():
    bits = SRC / "codes" / "bits.py"
    graph = {"dsh.codes.bits": imported_modules(bits, bits.read_text() + "\nfrom ..index.flat import HammingIndex\n"),
             "dsh.data.loader": {"dsh.models.normalize"}, "dsh.models.registry": {"dsh.codes.bits", "dsh"}}
    assert layer_violations(graph) == ["dsh.codes.bits imports dsh.index.flat",
                                       "dsh.data.loader imports dsh.models.normalize"]


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle between modules of ``graph`` (a package and its own modules aside), or None."""
    graph = {m: {t for t in targets if t in graph and not t.startswith(m + ".") and not m.startswith(t + ".")}
             for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail[trail.index(nxt):] + [nxt]
            if nxt not in state and (circle := visit(nxt, trail + [nxt])):
                return circle
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (circle := visit(module, [module])):
            return circle
    return None


def test_no_import_circle_between_modules():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)
    assert find_circle({"dsh.a.x": {"dsh.a.y"}, "dsh.a.y": {"dsh.b.z"}, "dsh.b.z": {"dsh.a.x"}}) == [
        "dsh.a.x", "dsh.a.y", "dsh.b.z", "dsh.a.x"]
