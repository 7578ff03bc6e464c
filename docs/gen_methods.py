"""Writes the method table of docs/methods.md from the registry `jaxkd.losses.LOSSES`.

    python docs/gen_methods.py           # rewrites the table between its markers
    python docs/gen_methods.py --check   # exits 1 if the checked-in table is out of date

`make docs` runs it before building, so the table follows the registry: one row per name,
with the term's class, its `family` and `paper` (citation and url) class attributes and the
defaults of its keyword-only hyper-parameters.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys

from jaxkd import losses as losses_package
from jaxkd.losses import LOSSES

METHODS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'methods.md')
BEGIN, END = '<!-- methods:begin -->', '<!-- methods:end -->'


def _defaults(term: type) -> list[tuple[str, object]]:
  """The term's hyper-parameters and their defaults, in declaration order."""
  if dataclasses.is_dataclass(term):
    fields = [field for field in dataclasses.fields(term) if field.init]
    return [(field.name, field.default if field.default is not dataclasses.MISSING
             else field.default_factory() if field.default_factory is not dataclasses.MISSING
             else inspect.Parameter.empty) for field in fields]
  return [(name, parameter.default)
          for name, parameter in inspect.signature(term).parameters.items()]


def _cell(text: str) -> str:
  """Table-safe: a `|` would end the cell."""
  return str(text).replace('|', '\\|').replace('\n', ' ')


def methods_table(losses=LOSSES) -> str:
  """The Markdown table of every registered term, in registry order."""
  rows = ['| name | term | family | paper | defaults |', '|---|---|---|---|---|']
  for name, term in losses.items():
    paper, url = term.paper.citation, term.paper.url
    paper = f'[{_cell(paper or url)}]({url})' if url else _cell(paper)
    defaults = ', '.join(f'`{key}={value!r}`' if value is not inspect.Parameter.empty
                         else f'`{key}` (required)' for key, value in _defaults(term))
    # The API page documents each term where jaxkd.losses re-exports it (else: the page).
    exported = getattr(losses_package, term.__name__, None) is term
    link = f'api/losses.md#jaxkd.losses.{term.__name__}' if exported else 'api/losses.md'
    rows.append(f'| `{name}` | [`{term.__name__}`]({link}) | '
                f'{_cell(getattr(term, "family", ""))} | {paper} | {_cell(defaults)} |')
  return '\n'.join(rows)


def render(text: str, table: str) -> str:
  """`text` with `table` between the method-table markers."""
  pattern = re.compile(rf'{re.escape(BEGIN)}\n.*?{re.escape(END)}', re.S)
  if not pattern.search(text):
    raise ValueError(f'{METHODS_MD} has no {BEGIN} ... {END} pair.')
  return pattern.sub(lambda _: f'{BEGIN}\n{table}\n{END}', text, count=1)


def main(argv: list[str]) -> int:
  with open(METHODS_MD) as f:
    text = f.read()
  new = render(text, methods_table())
  if '--check' in argv:
    if new != text:
      print(f'{METHODS_MD}: the method table is out of date; run python docs/gen_methods.py',
            file=sys.stderr)
      return 1
    return 0
  if new != text:
    with open(METHODS_MD, 'w') as f:
      f.write(new)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
