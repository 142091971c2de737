"""MkDocs hook: the option table of the cross-entropies, rendered from the declaration.

A page that holds the marker line ``<!-- smoothloss:options -->`` gets, in its place,
the table :func:`smoothloss._options.markdown_table` renders from
:class:`smoothloss._options.Options` (name, default, meaning): the docs cannot drift
from the code.
"""

from __future__ import annotations

from typing import Any

from smoothloss._options import markdown_table

MARKER = "<!-- smoothloss:options -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MARKER, markdown_table()) if MARKER in markdown else markdown
