"""A Griffe extension for the API reference: read smoothloss's docstrings as Google style.

The docstrings are written for ``help()`` and doctest as much as for this site, and use
three spellings that Griffe's Google parser reads differently from what they mean:

* ``Example:`` (singular) starts a Google "Examples" section; Griffe only knows the
  plural, and would render the doctest lines (``>>> ...``) as Markdown block quotes;
* Sphinx roles such as ``:func:`smoothloss.cross_entropy``` are shown as inline code;
* a paragraph ending in ``::`` (a reStructuredText literal block) ends in ``:``.

The docstrings themselves are unchanged: this runs only while the site is built
(``mkdocs.yml``: ``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)


def google_docstring(text: str) -> str:
    """The docstring ``text`` with the three spellings above rewritten."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(r"`\1`", text)
    return _LITERAL.sub(r"\1:", text)


class GoogleExamples(griffe.Extension):
    """Rewrite every docstring of the loaded objects (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = google_docstring(obj.docstring.value)
