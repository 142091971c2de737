"""The documentation: ``mkdocs build --strict`` succeeds, and its runnable examples run.

The site is built once per session (``mkdocs build --strict`` in a subprocess from the
repository root, into a temporary folder; a few seconds) and is skipped when the ``docs``
extra (MkDocs, the Material theme, mkdocstrings[python], latex2mathml) is missing. The
built API page must document every name in ``__all__`` of ``smoothloss`` and of its
framework modules. The built site must work offline, as a browser opens it: every
internal link and ``#anchor`` resolves to a file and an id in it, no page shows
unrendered TeX (the maths is MathML, written at build time by docs/hooks/mathml.py), and
no asset (script, stylesheet, font, image, CSS ``url(...)``) comes from another host.

A Python example in ``docs/*.md`` is *runnable* when the line ``<!-- runnable -->``
comes before its fence (blank lines may come between them). The marker is an HTML
comment, so the built site does not show it. The examples run in
subprocesses, one for each framework (NumPy, PyTorch, JAX, TensorFlow with Keras), so
each framework gets its own test id. An example that imports a module that is not
installed is skipped; if every example of a framework is skipped, that test is skipped.
"""

from __future__ import annotations

import ast
import functools
import html
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# pytest -n auto (README): the site is built once, in one worker
pytestmark = pytest.mark.xdist_group("docs")

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


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module: ``(site folder, mkdocs output)``."""
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs use the Material theme (mkdocs-material)")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs mkdocstrings[python]")
    pytest.importorskip("latex2mathml", reason="docs/hooks/mathml.py renders the maths with latex2mathml")
    folder = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # Material's notice about MkDocs 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder, proc.stdout + proc.stderr


def test_mkdocs_build_strict(site):
    folder, _ = site
    api = (folder / "api" / "index.html").read_text(encoding="utf-8")
    for module, names in _public_names().items():
        missing = [name for name in names if f'id="{module}.{name}"' not in api]
        assert not missing, f"docs/api.md does not document {module}: {missing}"
    # docs/griffe_docstrings.py ran: doctest examples are code, not Markdown block quotes
    assert "<blockquote>" not in api and ":func:" not in api


def test_api_signatures_are_formatted(site):
    # mkdocstrings formats separate signatures with Black or Ruff (ruff is in the docs
    # extra); without one it prints each signature on one long line.
    folder, log = site
    assert "Formatting signatures requires either Black or Ruff" not in log
    api = (folder / "api" / "index.html").read_text(encoding="utf-8")
    signature = re.search(r'<div class="doc-signature[^"]*">(.*?)</div>', api, re.S)
    assert signature, "no separate signature found on the API page"
    text = html.unescape(re.sub(r"<[^>]+>", "", signature.group(1)))
    assert max(len(line) for line in text.splitlines()) <= 80, text


class _Page(HTMLParser):
    """The ids, links, assets, inline CSS and text (outside code) of one HTML page."""

    # <link rel=...> values that only name other pages; every other <link> fetches something
    NAVIGATION = {"canonical", "alternate", "prev", "next", "search", "author", "license", "help"}
    SKIP_TEXT = {"pre", "code", "script", "style", "textarea"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links, self.assets, self.css, self.text = set(), [], [], [], []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "link" and a.get("href"):
            rel = set((a.get("rel") or "").lower().split())
            if rel - self.NAVIGATION or not rel:
                self.assets.append(f"<link rel={a.get('rel')}> {a['href']}")
            else:
                self.links.append(a["href"])
        for key in ("src", "data", "poster"):
            if a.get(key) and tag in {"script", "img", "iframe", "embed", "source", "video", "audio", "track", "input", "object"}:
                self.assets.append(f"<{tag} {key}> {a[key]}")
        for candidate in (a.get("srcset") or "").split(","):
            if candidate.strip():
                self.assets.append(f"<{tag} srcset> {candidate.split()[0]}")
        if a.get("style"):
            self.css.append(a["style"])
        if tag in self.SKIP_TEXT:
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in self.SKIP_TEXT and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if self.lasttag == "style":
            self.css.append(data)
        if not self._skip:
            self.text.append(data)


def _pages(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.html"))}


@functools.lru_cache(maxsize=2)
def _parsed(folder: Path) -> dict[str, _Page]:
    parsed = {}
    for name, text in _pages(folder).items():
        page = _Page()
        page.feed(text)
        page.close()
        parsed[name] = page
    return parsed


def _outside(url: str) -> bool:
    """True for a URL that leaves the site: http(s) or protocol-relative to any host."""
    parts = urlsplit(url.strip())
    return parts.scheme in ("http", "https") or (not parts.scheme and url.strip().startswith("//"))


def test_site_links_and_anchors_resolve(site):
    folder, _ = site
    pages = _parsed(folder)
    broken = []
    for name, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or href.startswith("//"):
                continue  # mailto:, https://..., javascript: — not this site's files
            base = folder if parts.path.startswith("/") else (folder / name).parent
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else (folder / name)
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or folder.resolve() not in target.resolve().parents:
                broken.append(f"{name}: {href} (no file {target})")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target.resolve().relative_to(folder.resolve()).as_posix()].ids
                if fragment not in ids:
                    broken.append(f"{name}: {href} (no id {fragment!r} in {target.name})")
    assert not broken, "\n".join(broken)


def test_site_has_no_unrendered_maths(site):
    folder, _ = site
    left = []
    for name, page in _parsed(folder).items():
        text = html.unescape("".join(page.text))
        for delimiter in ("$$", "\\(", "\\["):
            at = text.find(delimiter)
            if at >= 0:
                left.append(f"{name}: {delimiter!r} in ...{text[max(0, at - 60):at + 60]!r}...")
    assert not left, "TeX left in the built pages (not rendered to MathML):\n" + "\n".join(left)
    assert "<math" in _pages(folder)["maths/index.html"], "docs/maths.md has no MathML"


def test_site_fetches_nothing_from_outside(site):
    folder, _ = site
    outside = []
    for name, page in _parsed(folder).items():
        outside += [f"{name}: {asset}" for asset in page.assets if _outside(asset.split("> ", 1)[1])]
        css = "\n".join(page.css)
        outside += [f"{name}: inline CSS url({url})" for url in _css_urls(css) if _outside(url)]
    for sheet in sorted(folder.rglob("*.css")):
        css = sheet.read_text(encoding="utf-8")
        name = sheet.relative_to(folder).as_posix()
        outside += [f"{name}: url({url})" for url in _css_urls(css) if _outside(url)]
    assert not outside, "assets fetched from outside the site:\n" + "\n".join(outside)


def _css_urls(css: str) -> list[str]:
    """Every url(...) and @import "..." in a stylesheet."""
    urls = [m.strip("'\" ") for m in re.findall(r"url\(([^)]*)\)", css)]
    return urls + re.findall(r"@import\s+[\"']([^\"']+)", css)
