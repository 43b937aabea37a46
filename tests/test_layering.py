"""The package's import graph: no cycle, and data flows one way through the layers.

    head <- render <- data <- config <- models <- inference <- train <- studies <- cli

(`inference` uses a trained model and never builds an optimizer or a train step; `train` may call it,
e.g. for turntables in its reports. `preview` renders heads and data for the CLI.) Every import
counts, including the lazy ones inside functions. Read from the source with `ast`, nothing imported.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "flexavatar_jax"
CONFIGS = ROOT / "configs"

LAYERS = ("head", "render", "data", "config", "models", "inference", "train", "studies", "cli")
# Modules outside the layer packages, placed in a layer.
PLACED = {"flexavatar_jax": "head", "flexavatar_jax.files": "head", "flexavatar_jax.preview": "data", "flexavatar_jax.config": "config",
          "flexavatar_jax.cli": "cli"}


def _module_files() -> dict[str, pathlib.Path]:
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    for path in CONFIGS.glob("*.py"):  # installed as flexavatar_jax.configs (setup.py package_dir)
        stem = path.stem
        files["flexavatar_jax.configs" + ("" if stem == "__init__" else f".{stem}")] = path
    return files


def _imports(name: str, path: pathlib.Path, modules: set[str]) -> set[str]:
    """Package modules `name` imports (a package import counts as its `__init__`)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "flexavatar_jax"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "flexavatar_jax":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & modules
            out |= subs if subs else {target}
            if subs and len(subs) < len(node.names):
                out.add(target)
    return {m for m in out if m in modules and m != name}


def _layer(module: str) -> str:
    if module in PLACED:
        return PLACED[module]
    parts = module.split(".")
    if parts[1] == "configs":
        return "head"  # config files import nothing of the package
    if parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module} is in no layer: add it to LAYERS or PLACED in {__file__}")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = _module_files()
    return {name: _imports(name, path, set(files)) for name, path in files.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        assert _layer(module) in LAYERS


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_only_downwards(graph):
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = [f"{m} ({_layer(m)}) imports {n} ({_layer(n)})" for m, deps in graph.items() for n in deps
             if rank[_layer(n)] > rank[_layer(m)]]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_inference_never_builds_training_machinery(graph):
    """The inference layer reaches no optimizer and no train step, even indirectly."""
    seen, todo = set(), [m for m in graph if m.startswith("flexavatar_jax.inference")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert not {m for m in seen if m.startswith("flexavatar_jax.train")}
    sources = "".join((PACKAGE / "inference" / p.name).read_text() for p in (PACKAGE / "inference").glob("*.py"))
    assert "optax" not in sources


def test_the_graph_is_read_correctly(graph):
    """The reader sees the imports this test relies on (so an empty graph cannot pass)."""
    assert "flexavatar_jax.models.avatar" in graph["flexavatar_jax.models.batch"]
    assert "flexavatar_jax.inference.params" in graph["flexavatar_jax.train.checkpoint"]
    assert any(n.startswith("flexavatar_jax.render") for n in graph["flexavatar_jax.data.synthetic"])
    assert sum(len(v) for v in graph.values()) > 100
