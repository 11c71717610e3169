"""The layers point one way and nothing reaches into a model's package from outside models/: checked on the
import statements of every module (module-level and inside functions), so a lazy import cannot hide a cycle."""

import ast
from pathlib import Path

import prvr

SRC = Path(prvr.__file__).resolve().parent
# lower layers never import higher ones; equal layers are peers
LAYERS = {
    "prvr.errors": 0, "prvr.io": 0, "prvr.config": 0, "prvr.device": 0, "prvr.runtime": 0, "prvr.dist": 0,
    "prvr.data": 1, "prvr.encode": 2, "prvr.synth": 3, "prvr.models": 3,
    "prvr.eval": 4, "prvr.train": 5, "prvr.index": 5, "prvr.serve": 6,
    "prvr.cli": 7, "prvr.demo": 7, "prvr": 7,  # the package root only re-exports Retriever
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("prvr"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prvr"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            # `from prvr.models import losses` imports the module prvr.models.losses
            out.update(n if (SRC.parent / n.replace(".", "/")).with_suffix(".py").exists()
                       or (SRC.parent / n.replace(".", "/")).is_dir() else node.module for n in names)
    return out


GRAPH = {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}
MODEL_PACKAGES = {f"prvr.models.{p.name}" for p in (SRC / "models").iterdir() if (p / "__init__.py").exists()
                  and p.name != "__pycache__"}


def layer(mod: str) -> int:
    best = max((k for k in LAYERS if mod == k or mod.startswith(k + ".")), key=len)
    return LAYERS[best]


def test_nothing_imports_upward():
    bad = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
           for m, deps in GRAPH.items() for d in deps if layer(d) > layer(m)]
    assert not bad, "\n".join(bad)


def test_models_are_reached_through_the_registry():
    assert MODEL_PACKAGES >= {"prvr.models.dreamprvr"}
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if any(d == p or d.startswith(p + ".") for p in MODEL_PACKAGES)
           and not (m.startswith("prvr.models.") and any(m == p or m.startswith(p + ".") for p in MODEL_PACKAGES))
           and m != "prvr.models"]
    assert not bad, "\n".join(bad)


def test_index_and_serve_do_not_import_train():
    bad = [f"{m} imports {d}" for m, deps in GRAPH.items() for d in deps
           if m.startswith(("prvr.index", "prvr.serve")) and d.startswith("prvr.train")]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    def resolve(dep: str) -> str | None:  # `from prvr.x import name` where name is not a module: prvr.x
        while dep and dep not in GRAPH:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m} for m, deps in GRAPH.items()}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles
