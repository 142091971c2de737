"""The documentation: ``mkdocs build --strict`` succeeds, and its runnable examples run.

The build runs in a subprocess from the repository root and is skipped when MkDocs,
the Material theme or mkdocstrings[python] is missing. The built API page must document
every name in ``__all__`` of ``smoothloss`` and of its framework modules.

A Python example in ``docs/*.md`` is *runnable* when the line ``<!-- runnable -->``
comes before its fence (blank lines may come between them). The marker is an HTML
comment, so the built site does not show it. The examples run in
subprocesses, one for each framework (NumPy, PyTorch, JAX, TensorFlow with Keras), so
each framework gets its own test id. An example that imports a module that is not
installed is skipped; if every example of a framework is skipped, that test is skipped.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
MARKER = "<!-- runnable -->"
RUNNABLE = re.compile(r"^<!-- runnable -->[ \t]*\n(?:[ \t]*\n)*```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
IMPORTS = re.compile(r"^[ \t]*(?:import|from)[ \t]+([A-Za-z_]\w*)", re.M)
# Pages whose examples the docs promise to run (each must have at least one).
REQUIRED_PAGES = ("getting-started.md", "migration.md")
# Modules whose __all__ the API page must cover, besides smoothloss itself.
FRAMEWORK_MODULES = ("torch", "jax", "keras", "tensorflow")
# A snippet runs with the first framework it imports, in this order.
GROUPS = {"tensorflow": ("tensorflow", "keras"), "jax": ("jax", "optax"), "torch": ("torch",), "numpy": ()}
# Snippets share one interpreter per group; run each in its own namespace and report all.
DRIVER = r"""
import importlib.util, json, runpy, sys, traceback
results = []
for path, needs in json.loads(sys.argv[1]):
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        results.append(["skip", path, "not installed: " + ", ".join(missing)])
        continue
    try:
        runpy.run_path(path, run_name="__main__")
    except BaseException:
        results.append(["fail", path, traceback.format_exc()])
    else:
        results.append(["ok", path, ""])
print("@@results@@" + json.dumps(results))
"""


def _snippets() -> list[tuple[str, int, str]]:
    """``(page, line, code)`` of every runnable example in docs/."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start(1)) + 1
            found.append((page.name, line, match.group(1)))
    return found


def _group(code: str) -> str:
    imported = set(IMPORTS.findall(code))
    return next(name for name, modules in GROUPS.items() if not modules or imported & set(modules))


def _public_names() -> dict[str, list[str]]:
    """``__all__`` of smoothloss and of each framework module, read without importing them."""
    names = {}
    for module, path in [("smoothloss", "__init__.py"), *((f"smoothloss.{m}", f"{m}.py") for m in FRAMEWORK_MODULES)]:
        tree = ast.parse((REPO / "smoothloss" / path).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                names[module] = list(ast.literal_eval(node.value))
    return names


def test_every_marker_precedes_a_python_example():
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert text.count(MARKER) == len(RUNNABLE.findall(text)), (
            f"{page.name}: a '{MARKER}' line is not followed by a ```python block"
        )
    pages = {page for page, _, _ in _snippets()}
    for required in REQUIRED_PAGES:
        assert required in pages, f"docs/{required} has no runnable example"


@pytest.mark.parametrize("group", list(GROUPS))
def test_runnable_examples_run(group, tmp_path):
    snippets = [s for s in _snippets() if _group(s[2]) == group]
    if not snippets:
        pytest.skip(f"no runnable {group} example in docs/")
    jobs, where = [], {}
    for n, (page, line, code) in enumerate(snippets):
        path = tmp_path / f"{Path(page).stem}_{line}.py"
        path.write_text(code, encoding="utf-8")
        needs = sorted(m for m in set(IMPORTS.findall(code)) if m not in sys.stdlib_module_names)
        jobs.append([str(path), needs])
        where[str(path)] = f"docs/{page}:{line}"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(jobs)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@results@@")]
    assert proc.returncode == 0 and lines, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(lines[-1][len("@@results@@"):])
    failures = [f"{where[path]}:\n{detail}" for status, path, detail in results if status == "fail"]
    assert not failures, "\n\n".join(failures)
    if all(status == "skip" for status, _, _ in results):
        pytest.skip("; ".join(f"{where[path]}: {detail}" for _, path, detail in results))


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material", reason="the docs use the Material theme (mkdocs-material)")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs mkdocstrings[python]")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's notice about MkDocs 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for module, names in _public_names().items():
        missing = [name for name in names if f'id="{module}.{name}"' not in api]
        assert not missing, f"docs/api.md does not document {module}: {missing}"
    # docs/griffe_docstrings.py ran: doctest examples are code, not Markdown block quotes
    assert "<blockquote>" not in api and ":func:" not in api
