"""Imports flow one way: read every module's imports (AST) and fail on an upward import, a cycle,
an rl <-> eval import, or JAX in the task layer. The checker is shown to fail on planted bad imports."""
import ast
import pathlib
import shutil

REPO = pathlib.Path(__file__).resolve().parents[1]

# floor of each top-level piece of the package; a module may import its own piece or a lower floor
FLOORS = {
    "errors": 0, "files": 0, "host": 0,
    "config": 1, "checkpoint": 1, "compute": 1,
    "task": 2, "model": 2,
    "data": 3, "train": 3, "sampling": 3,
    "rl": 4, "eval": 4,
    "stages": 5,
    "experiments": 6, "main": 6, "lineage": 6, "": 6,   # "": the package's own __init__
}


def module_names(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for p in (root / "interplay_jax").rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports_of(path: pathlib.Path, modules: dict) -> set[str]:
    """Package modules imported by one file (``from pkg import sub`` counts as importing pkg.sub)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            out |= subs or ({node.module} & set(modules))
    return out


def piece(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def check(root: pathlib.Path) -> list[str]:
    modules = module_names(root)
    graph = {m: imports_of(p, modules) - {m} for m, p in modules.items()}
    fails = []
    for m, targets in sorted(graph.items()):
        a = piece(m)
        if a not in FLOORS:
            fails.append(f"{m}: package piece {a!r} has no floor")
            continue
        for t in sorted(targets):
            b = piece(t)
            if b != a and FLOORS.get(b, 99) >= FLOORS[a]:
                fails.append(f"upward or sideways import: {m} (floor {FLOORS[a]}) -> {t} (floor {FLOORS.get(b)})")
        if a == "task" and any(n in ("jax", "flax") for n in _external(modules[m])):
            fails.append(f"the task layer imports JAX: {m}")
    fails += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return fails


def _external(path: pathlib.Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_imports_flow_one_way():
    assert check(REPO) == []


def test_the_checker_fails_on_planted_bad_imports(tmp_path):
    shutil.copytree(REPO / "interplay_jax", tmp_path / "interplay_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pkg = tmp_path / "interplay_jax"
    assert check(tmp_path) == []
    (pkg / "model" / "planted.py").write_text("from interplay_jax.stages import train\n")
    (pkg / "rl" / "planted.py").write_text("from interplay_jax.eval import passk\n")
    (pkg / "task" / "planted.py").write_text("import jax.numpy as jnp\n")
    (pkg / "data" / "cycle_a.py").write_text("from interplay_jax.data import cycle_b\n")
    (pkg / "data" / "cycle_b.py").write_text("import interplay_jax.data.cycle_a\n")
    fails = "\n".join(check(tmp_path))
    assert "interplay_jax.model.planted (floor 2) -> interplay_jax.stages.train" in fails
    assert "interplay_jax.rl.planted (floor 4) -> interplay_jax.eval.passk" in fails
    assert "the task layer imports JAX: interplay_jax.task.planted" in fails
    assert "import cycle: interplay_jax.data.cycle_a -> interplay_jax.data.cycle_b" in fails
