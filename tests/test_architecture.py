"""The dependency rule, checked on the source: cli -> {runtime, ray, serve, train, export} ->
engines -> model -> kernels. Every import counts, top-level and inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Source folder -> the package it installs as (pyproject.toml's package-dir).
FOLDERS = {"p2phd_infer": "p2phd_infer", "train": "p2phd_infer.train",
           "export": "p2phd_infer.export", "kernels": "p2phd_infer.kernels"}
# The layers, lowest first. A module may import its own layer and the ones below.
# labels.py (one-hot and edge encoding) defines what the label kernels compute, and errors.py
# imports nothing: both sit with the kernels, at the bottom, as do the limits (nothing imported)
# and the options mechanism (errors only), which every layer's options use.
BOTTOM = ["labels", "errors", "limits", "options"]
MODEL = ["config", "networks", "checkpoint", "official", "instance_features", "label_names",
         "synthesizer", "styles", "ids", "image_io", "files", "locations", "palette", "sim",
         "label_map", "devices"]
RUNTIME = ["runtime", "batching", "step", "plan", "api", "local_run", "ray_run", "serve",
           "video", "evaluate"]


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top == "kernels" or top in BOTTOM:
        return 0, "kernels"
    if top in MODEL or top == "":
        return 1, "model"
    if top == "engines":
        return 2, "engines"
    if top in RUNTIME:
        return 3, "runtime"
    if top in ("train", "export"):
        return 3, top
    if top == "cli":
        return 4, "cli"
    raise AssertionError(f"{module}: no layer; add it to tests/test_architecture.py")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts]) if parts else package] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known}
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {n: imports(n, p, set(found)) - {n} for n, p in found.items()}


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):        # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers():
    bad = []
    for name, targets in graph().items():
        if name.endswith("__main__"):
            continue        # an entry point, like the console script: it starts the CLI
        rank, group = layer(name)
        for t in targets:
            t_rank, t_group = layer(t)
            peer = t_rank == rank == 3 and t_group != group
            if t_rank > rank or peer:
                bad.append(f"{name} ({group}) imports {t} ({t_group})")
    assert not bad, "imports against the dependency rule:\n" + "\n".join(sorted(bad))


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rule can fail: an engine module importing the CLI is caught."""
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from ..cli import main\n")
    known = {"p2phd_infer.cli", "p2phd_infer.engines"}
    assert imports("p2phd_infer.engines.bad", fake, known) == {"p2phd_infer.cli"}
    assert layer("p2phd_infer.engines.bad")[0] < layer("p2phd_infer.cli")[0]
