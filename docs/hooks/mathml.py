"""MkDocs hook: render the maths at build time, as MathML.

``pymdownx.arithmatex`` (``generic: true``) leaves each formula as TeX in
``<span class="arithmatex">\\(...\\)</span>`` (inline) or
``<div class="arithmatex">\\[...\\]</div>`` (display). This hook converts those spans to
MathML with ``latex2mathml`` (pure Python, in the ``docs`` extra), which browsers render
natively. The built site therefore needs no JavaScript renderer and no CDN; it shows
its maths offline. A formula that does not convert fails the build.

MathML Core has no ``menclose`` (``\\boxed``) and ignores ``mathvariant="monospace"``
(``\\texttt``); docs/stylesheets/extra.css draws both.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

from latex2mathml.converter import convert
from mkdocs.exceptions import PluginError

MATH = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.S)
DELIMITERS = {"span": ("\\(", "\\)"), "div": ("\\[", "\\]")}
# Inside \texttt{...} and friends latex2mathml keeps TeX escapes such as \_ verbatim.
TEXT_COMMAND = re.compile(r"\\(?:texttt|text|textrm|textit|textbf|mathrm)\{[^{}]*\}")
TEXT_ESCAPES = {"\\_": "_", "\\%": "%", "\\&": "&", "\\#": "#", "\\$": "$"}
NS = "http://www.w3.org/1998/Math/MathML"
SCRIPTED = {f"{{{NS}}}{tag}" for tag in ("msub", "msup", "msubsup", "munder", "mover", "munderover")}
ET.register_namespace("", NS)


def _unescape_text(match: re.Match[str]) -> str:
    text = match[0]
    for escaped, plain in TEXT_ESCAPES.items():
        text = text.replace(escaped, plain)
    return text


def _operator_names(parent: ET.Element) -> None:
    """Space operator names (\\log, \\max, \\operatorname{lse}) as TeX does.

    latex2mathml writes ``\\operatorname{lse}`` as ``<mo>lse</mo>``, which a browser
    pads like a binary operator ("lse (x)"), and ``\\log p`` as ``<mi>log</mi><mi>p</mi>``
    with no space at all ("logp"). Make every name an ``<mi>`` and put a thin space after
    it unless an opening parenthesis follows.
    """
    children = list(parent)
    for i, child in enumerate(children):
        _operator_names(child)
        if parent.tag in SCRIPTED:
            continue  # a script's base and scripts take no spaces
        base = child[0] if child.tag in SCRIPTED and len(child) else child
        name = base.text or ""
        if base.tag not in (f"{{{NS}}}mi", f"{{{NS}}}mo") or len(name) < 2 or not name.isalpha():
            continue
        base.tag = f"{{{NS}}}mi"
        base.attrib.pop("movablelimits", None)
        previous = children[i - 1] if i else None
        if previous is not None and previous.tag not in (f"{{{NS}}}mo", f"{{{NS}}}mspace"):
            # after an ordinary symbol, as in K\operatorname{lse}(x)
            parent.insert(list(parent).index(child), ET.Element(f"{{{NS}}}mspace", width="0.167em"))
        following = children[i + 1] if i + 1 < len(children) else None
        while following is not None and len(following) and not (following.text or "").strip():
            following = following[0]  # \left( is an <mrow> that starts with the "("
        if following is not None and (following.text or "").strip() not in ("(", "[", "{"):
            space = ET.Element(f"{{{NS}}}mspace", width="0.167em")
            parent.insert(list(parent).index(child) + 1, space)


def to_mathml(tex: str, *, display: bool) -> str:
    """MathML for one TeX formula (without its delimiters)."""
    tex = tex.strip()
    root = ET.fromstring(convert(TEXT_COMMAND.sub(_unescape_text, tex), display="block" if display else "inline"))
    _operator_names(root)
    mathml = ET.tostring(root, encoding="unicode", short_empty_elements=True)
    # Keep the source for screen readers and copy-paste, as MathJax does.
    return mathml.replace("<math ", f'<math alttext="{html.escape(tex)}" ', 1)


def on_page_content(html_text: str, page, **kwargs) -> str:
    def replace(match: re.Match[str]) -> str:
        tag = match["tag"]
        opening, closing = DELIMITERS[tag]
        tex = html.unescape(match["tex"]).strip()
        if not (tex.startswith(opening) and tex.endswith(closing)):
            raise PluginError(f"{page.file.src_uri}: unexpected arithmatex output {match[0][:80]!r}")
        try:
            mathml = to_mathml(tex[len(opening):-len(closing)], display=tag == "div")
        except Exception as error:  # latex2mathml raises many kinds
            raise PluginError(f"{page.file.src_uri}: cannot convert the formula {tex!r} to MathML: {error}") from error
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return MATH.sub(replace, html_text)
