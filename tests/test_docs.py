"""The documentation: ``mkdocs build --strict`` succeeds, and its runnable examples run.

The site is built once per session (``mkdocs build --strict`` in a subprocess from the
repository root, into a temporary folder; a few seconds) and is skipped when the ``docs``
extra (MkDocs, the Material theme, mkdocstrings[python], latex2mathml) is missing. The
built API page must have a section for every public module (``smoothloss`` and each
``smoothloss/<name>.py`` without a leading underscore) and document every name in its
``__all__``, there or under the module that re-exports it. The built site must work
offline, opened from disk (``file://``, no server) as a browser opens it: every internal
link and ``#anchor`` resolves to a file (never a folder, which a browser shows as a
listing) and an id in it, search loads its index from a script, no page shows
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


def _public_modules() -> list[tuple[str, Path]]:
    """smoothloss and every public module beside it: ``smoothloss/<name>.py`` whose name has
    no leading underscore (``__main__``, the command line, is not an API)."""
    files = sorted(p for p in (REPO / "smoothloss").glob("*.py") if not p.stem.startswith("_"))
    return [("smoothloss", REPO / "smoothloss" / "__init__.py"), *((f"smoothloss.{p.stem}", p) for p in files)]


def _public_names() -> dict[str, list[str]]:
    """``__all__`` of every public module, read without importing it; a public module
    without ``__all__`` is an error."""
    names = {}
    for module, path in _public_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                names[module] = list(ast.literal_eval(node.value))
        assert module in names, f"public module {module} ({path.name}) has no __all__"
    return names


def test_public_modules_are_known():
    # the list the API page test walks: the framework modules, their split-off parts and
    # the drop-ins, smoothloss.transformers among them
    modules = {m for m, _ in _public_modules()}
    assert {"smoothloss", "smoothloss.torch", "smoothloss.jax", "smoothloss.keras", "smoothloss.tensorflow",
            "smoothloss.transformers", "smoothloss.cut_cross_entropy"} <= modules, modules


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
    api = (folder / "api.html").read_text(encoding="utf-8")
    public = _public_names()
    missing = []
    for module, names in public.items():
        if f'id="{module}"' not in api:
            missing.append(f"{module} (no section)")
        for name in names:
            # documented in its own module's section, or where a public module re-exports it
            where = [module, *(m for m, ns in public.items() if m != module and name in ns)]
            if not any(f'id="{m}.{name}"' in api for m in where):
                missing.append(f"{module}.{name}")
    assert not missing, "docs/api.md does not document: " + ", ".join(missing)
    # docs/griffe_docstrings.py ran: doctest examples are code, not Markdown block quotes
    assert "<blockquote>" not in api and ":func:" not in api


def test_api_signatures_are_formatted(site):
    # mkdocstrings formats separate signatures with Black or Ruff (ruff is in the docs
    # extra); without one it prints each signature on one long line.
    folder, log = site
    assert "Formatting signatures requires either Black or Ruff" not in log
    api = (folder / "api.html").read_text(encoding="utf-8")
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
            if target.is_dir():  # a server answers index.html; file:// shows a listing
                broken.append(f"{name}: {href} (a folder: opened from disk it lists its files)")
                continue
            if not target.is_file() or folder.resolve() not in target.resolve().parents:
                broken.append(f"{name}: {href} (no file {target})")
                continue
            fragment = unquote(parts.fragment)
            if fragment and target.suffix == ".html":
                ids = pages[target.resolve().relative_to(folder.resolve()).as_posix()].ids
                if fragment not in ids:
                    broken.append(f"{name}: {href} (no id {fragment!r} in {target.name})")
    assert not broken, "\n".join(broken)


def test_site_searches_from_disk(site):
    # From file:// a page cannot fetch search_index.json nor start a Web Worker: the
    # offline plugin writes the index as a script, and the vendored iframe-worker shim
    # (docs/javascripts/) runs the worker in an iframe. Every page must load both.
    folder, _ = site
    assert (folder / "search" / "search_index.js").is_file(), "no search/search_index.js"
    index = (folder / "search" / "search_index.js").read_text(encoding="utf-8")
    assert "Label" in index or "label" in index, "the search index holds no text"
    for name, page in _parsed(folder).items():
        if name == "404.html":  # only a server shows it, with absolute URLs
            continue
        scripts = [a.split("> ", 1)[1] for a in page.assets if a.startswith("<script src>")]
        assert any(s.endswith("iframe-worker-shim.js") for s in scripts), f"{name}: no iframe-worker shim"
        # the theme's bundle, which loads search/search_index.js when the page is on file://
        bundles = [s for s in scripts if "/bundle." in s or s.startswith("assets/javascripts/bundle.")]
        assert bundles, f"{name}: no theme bundle"
        for script in bundles:
            path = ((folder / name).parent / script).resolve()
            assert "search_index.js" in path.read_text(encoding="utf-8"), f"{name}: {script} never loads the index"
        config = re.search(r'<script id="__config" type="application/json">(.*?)</script>', _pages(folder)[name], re.S)
        worker = json.loads(config.group(1))["search"]
        assert ((folder / name).parent / worker).is_file(), f"{name}: no search worker {worker}"


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
    assert "<math" in _pages(folder)["maths.html"], "docs/maths.md has no MathML"


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
