"""The package's layout: imports inside ``smoothloss/`` point one way, with no cycle,
and framework code lives only in the framework's binding and adapter modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "smoothloss"
FRAMEWORKS = ("torch", "jax", "jaxlib", "tensorflow", "keras", "optax")

# The Array-API layers: the declared options, formulas, checks and the core over arrays handed in.
CORE = ("_options", "_formulas", "_validation", "_core", "_linear", "_vocab_parallel")
# The public functions above the bindings, framework-free too.
PUBLIC = ("_losses", "_targets", "_binary", "_mixing", "_mixup", "__init__")
# Each binding's facts and kernels: leaves that never import the algorithm.
FACTS = ("backends/_base", "backends/torch", "backends/jax", "backends/tensorflow", "backends/tensorflow_namespace")
ALGORITHM = ("smoothloss._core", "smoothloss._linear", "smoothloss._vocab_parallel", "smoothloss._losses")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module an import statement in ``path`` names (function-level ones too):
    ``from a import b`` names ``a.b`` where that is a module of the package, else ``a``."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in _imports(path):
            if target in modules and target != name:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walker_sees_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    graph = _graph()
    assert len(graph) > 20  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize("name", CORE + PUBLIC)
def test_core_and_public_layers_import_no_framework(name):
    path = PACKAGE / f"{name}.py"
    bad = [(m, line) for m, line in _imports(path) if m.split(".")[0] in FRAMEWORKS]
    assert not bad, f"{path.name} imports a framework: {bad}"


@pytest.mark.parametrize("name", CORE)
def test_core_layers_do_not_import_upwards(name):
    """The core gets its framework binding handed in; it never imports the dispatch or
    the bindings, nor the public functions above it."""
    path = PACKAGE / f"{name}.py"
    upward = ("smoothloss.backends", "smoothloss._losses", "smoothloss._targets", "smoothloss._binary",
              "smoothloss._mixing", "smoothloss._mixup", "smoothloss.testing", "smoothloss.torch", "smoothloss.jax", "smoothloss.keras",
              "smoothloss.tensorflow")
    bad = [(m, line) for m, line in _imports(path) if m.startswith(upward)]
    assert not bad, f"{path.name} imports upwards: {bad}"


def test_framework_switches_live_in_the_dispatch_only():
    """No module outside ``smoothloss/backends/`` asks which framework an array is from."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "backends" in path.parts or "bench" in path.parts or "testing" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("framework_name(", "is_torch_namespace", "is_jax_array", "is_torch_array"):
            if needle in text:
                offenders.append((path.name, needle))
    assert not offenders, offenders


def test_torch_adapter_imports_torch_distributed_lazily():
    """``import smoothloss.torch`` does not import ``torch.distributed`` itself; the
    vocab-parallel function imports it on first use."""
    for name in ("torch.py", "torch_parallel.py", "backends/torch.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not any(m.startswith("torch.distributed") for m in names), (name, names)


@pytest.mark.parametrize("name", FACTS)
def test_binding_facts_are_leaves(name):
    """A binding's facts and kernels never import the algorithm, nor the autodiff and
    compiled layers above them: the core takes the facts as an argument, and a call goes
    down once (adapter -> public function -> autodiff layer -> core -> kernels)."""
    path = PACKAGE / f"{name}.py"
    above = ALGORITHM + ("smoothloss.backends._autodiff", "smoothloss.testing")
    bad = [(m, line) for m, line in _imports(path)
           if m.startswith(above) or m.endswith(("_autodiff", "_compiled"))]
    assert not bad, f"{path.name} imports the layers above it: {bad}"


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_compiled_kernels_sit_under_the_autodiff_layer(framework):
    path = PACKAGE / "backends" / f"{framework}_compiled.py"
    bad = [(m, line) for m, line in _imports(path) if m.endswith("_autodiff") and m != "smoothloss.backends._autodiff"]
    assert not bad, bad


def test_only_the_autodiff_layers_choose_a_path():
    """The choice between eager and compiled closed forms (``closed(...)``) is made in
    the ``Losses`` classes only: no other module asks a binding for ``fused`` kernels."""
    offenders = [p.name for p in PACKAGE.rglob("*.py") if ".fused(" in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def test_no_test_driver_ships_in_the_backends():
    assert not (PACKAGE / "backends" / "drivers.py").exists()
    assert (PACKAGE / "testing" / "drivers.py").exists()


ADAPTERS = ("torch", "jax", "keras", "keras_linear", "tensorflow", "transformers", "torch_parallel", "jax_parallel",
            "torch_mixup", "torch_liger", "cut_cross_entropy")


@pytest.mark.parametrize("name", ADAPTERS)
def test_adapters_use_no_private_name_of_a_sibling_adapter(name):
    """Adapters import public names, the declared options, or helpers from a module of
    their own (``_torch_support``), never a private helper of another adapter."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text(encoding="utf-8"))
    siblings = {f"smoothloss.{a}" for a in ADAPTERS}
    bad = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
           and node.module in siblings for alias in node.names if alias.name.startswith("_")]
    assert not bad, bad


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, long
