"""MkDocs hooks (`hooks:` in mkdocs.yml), so the site follows the package and the repository:

- an API page for every public module of `jaxkd` (`docs/api/<module>.md` where one is checked
  in, else a generated `::: jaxkd.<module>`), the API index, and the API section of the nav;
- a placeholder for a guide the nav names that is not written yet (`PENDING`): the file, once
  it lands, replaces it;
- the repository files outside docs/ that a guide links to (`../experiments/results/...`,
  `../benchmarks/README.md`): copied into the site at their repository path, the links
  rewritten to them, so the guides read the same on GitHub and on the site.
"""
from __future__ import annotations

import ast
import os
import posixpath
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'jaxkd'
PENDING = {'performance.md': 'Performance notes', 'adding-a-method.md': 'Adding a method'}
# `](target)`: a Markdown link's or image's target, up to an optional anchor or title.
_LINK = re.compile(r'\]\(([^)\s#]+)((?:#[^)\s]*)?(?:\s+"[^"]*")?)\)')


def public_modules() -> list[str]:
  """The package's public modules and sub-packages, as tests/test_readme.py counts them."""
  package = os.path.join(ROOT, PACKAGE)
  return sorted(name.removesuffix('.py') for name in os.listdir(package)
                if not name.startswith('_') and (
                    name.endswith('.py') or
                    os.path.isfile(os.path.join(package, name, '__init__.py'))))


def _summary(module: str) -> str:
  """The first line of a module's docstring, read without importing it."""
  path = os.path.join(ROOT, PACKAGE, module + '.py')
  if not os.path.exists(path):
    path = os.path.join(ROOT, PACKAGE, module, '__init__.py')
  with open(path) as f:
    docstring = ast.get_docstring(ast.parse(f.read())) or ''
  return docstring.split('\n\n')[0].replace('\n', ' ').replace('|', '\\|')


def on_config(config):
  """The nav's API section: the index, then one page per public module."""
  api = ['api/index.md'] + [{f'{PACKAGE}.{name}': f'api/{name}.md'}
                            for name in public_modules()]
  for i, entry in enumerate(config['nav']):
    if isinstance(entry, dict) and 'API reference' in entry:
      config['nav'][i] = {'API reference': api}
  return config


def _outside_links(page_text: str, page_uri: str) -> set[str]:
  """Repository paths outside docs/ that a page's links point to."""
  paths = set()
  for target, _ in _LINK.findall(page_text):
    path = _repository_path(target, page_uri)
    if path is not None:
      paths.add(path)
  return paths


def _repository_path(target: str, page_uri: str) -> str | None:
  """The repository path of a relative link target that leaves docs/, else None."""
  if '://' in target or target.startswith(('/', 'mailto:')):
    return None
  path = posixpath.normpath(posixpath.join('docs', posixpath.dirname(page_uri), target))
  return None if path.startswith(('docs/', '../')) or path == 'docs' else path


def on_files(files, config):
  """Adds the generated API pages, the placeholders and the linked repository files."""
  from mkdocs.structure.files import File  # here: the tests import this module without MkDocs
  for name in public_modules():
    if files.get_file_from_path(f'api/{name}.md') is None:
      files.append(File.generated(config, f'api/{name}.md', content=f'::: {PACKAGE}.{name}\n'))
  if files.get_file_from_path('api/index.md') is None:
    rows = [f'| [`{PACKAGE}.{name}`]({name}.md) | {_summary(name)} |'
            for name in public_modules()]
    files.append(File.generated(config, 'api/index.md', content='\n'.join(
        ['# API reference', '', 'Generated from the docstrings, one page per public module.',
         '', '| module | what it holds |', '|---|---|', *rows, ''])))
  for name, title in PENDING.items():
    if files.get_file_from_path(name) is None:
      files.append(File.generated(config, name, content=(
          f'# {title}\n\nThis guide is not written yet.\n')))
  linked = set()
  for page in files.documentation_pages():
    if page.abs_src_path and not page.generated_by:
      with open(page.abs_src_path, encoding='utf-8') as f:
        linked |= _outside_links(f.read(), page.src_uri)
  for path in sorted(linked):
    source = os.path.join(ROOT, path)
    if os.path.isfile(source) and files.get_file_from_path(path) is None:
      files.append(File.generated(config, path, abs_src_path=source))
  return files


def on_page_markdown(markdown, page, config, files):
  """Points the links that leave docs/ at the copies `on_files` put into the site."""
  if page.file.abs_src_path is None or not page.file.abs_src_path.startswith(
      os.path.join(ROOT, 'docs') + os.sep):
    return markdown

  def rewrite(match: re.Match) -> str:
    path = _repository_path(match.group(1), page.file.src_uri)
    if path is None or files.get_file_from_path(path) is None:
      return match.group(0)
    target = posixpath.relpath(path, posixpath.dirname(page.file.src_uri) or '.')
    return f']({target}{match.group(2)})'

  return _LINK.sub(rewrite, markdown)
