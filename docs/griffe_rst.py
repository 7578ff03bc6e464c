"""A griffe extension (mkdocs.yml: mkdocstrings' `extensions`) that turns the reST in jaxkd's
docstrings into Markdown before they are parsed, so the API pages render them:
`.. math::` blocks (MathJax through `pymdownx.arithmatex`), `` `text <url>`_ `` links,
`:func:`name`` roles, and wrapped lines that start with `>=`. The docstrings themselves
stay as they are."""
from __future__ import annotations

import re
import textwrap

import griffe

# `.. math::` and its indented block (blank lines inside it included).
_MATH = re.compile(r'^(?P<indent>[ \t]*)\.\. math::[ \t]*\n'
                   r'(?P<body>(?:(?P=indent)[ \t]+\S.*\n|[ \t]*\n)+)', re.M)
_LINK = re.compile(r'`([^`<]+?)\s*<(https?://[^>]+)>`_', re.S)
_ROLE = re.compile(r':(?:func|class|meth|mod|attr|data|obj):`~?([^`]+)`')
# A wrapped line that starts with `>=` would open a Markdown block quote.
_QUOTE = re.compile(r'^([ \t]*)>(?!>)', re.M)


def rst_to_markdown(text: str) -> str:
  """Markdown for the reST constructs jaxkd's docstrings use; everything else unchanged."""
  def math(match: re.Match) -> str:
    indent, body = match.group('indent'), textwrap.dedent(match.group('body')).strip('\n')
    return f'{indent}$$\n{textwrap.indent(body, indent)}\n{indent}$$\n\n'

  text = _MATH.sub(math, text if text.endswith('\n') else text + '\n').rstrip('\n')
  text = _LINK.sub(lambda m: f'[{" ".join(m.group(1).split())}]({m.group(2)})', text)
  text = _QUOTE.sub(r'\1\\>', text)
  return _ROLE.sub(r'`\1`', text)


class RstToMarkdown(griffe.Extension):
  """Rewrites each docstring with `rst_to_markdown` as griffe loads it."""

  def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
    del kwargs
    if obj.docstring is not None:
      obj.docstring.value = rst_to_markdown(obj.docstring.value)
