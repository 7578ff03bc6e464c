"""Every ```python snippet in README.md and docs/ runs as written (examples that are not meant
to run use another fence: ```py, ```text); the tables match the code and the results."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(path, ROOT) for path in
                               glob.glob(os.path.join(ROOT, 'docs', '**', '*.md'), recursive=True))


def _snippets(page: str) -> list[str]:
  with open(os.path.join(ROOT, page)) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


SNIPPETS = {f'{page}:{index}': snippet for page in PAGES
            for index, snippet in enumerate(_snippets(page))}


def test_readme_has_snippets():
  assert _snippets('README.md')
  assert len(SNIPPETS) > len(_snippets('README.md'))  # the guides' too


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SNIPPETS))
def test_readme_snippet_runs(name, tmp_path):
  result = subprocess.run([sys.executable, '-c', SNIPPETS[name]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize('name,first_only', [
    ('fashion_mnist_kd', False), ('transfer', False), ('kd_methods', False), ('schemes', False),
    ('layer_transfer', True), ('soft_targets', True), ('digits_transfer', True),
    ('headroom_kd', False)])
def test_readme_shows_the_checked_in_results(name, first_only):
  """docs/results.md's tables are the ones experiments/results/ holds, line for line (for the
  long ones, their first table: the rest is linked)."""
  with open(os.path.join(ROOT, 'docs', 'results.md')) as f:
    results = f.read().splitlines()
  with open(os.path.join(ROOT, 'experiments', 'results', f'{name}.md')) as f:
    text = f.read()
  if first_only:
    start = text.index('\n|')
    text = text[start:text.index('\n\n', start)]
  rows = [line for line in text.splitlines()
          if line.startswith('| ') and not line.startswith('| row |')]
  assert rows
  missing = [line for line in rows if line not in results]
  assert not missing, (f'docs/results.md lacks these rows of experiments/results/{name}.md: '
                       f'{missing}')


def test_readme_module_table_matches_the_package():
  """The library table names every public module of jaxkd, and nothing that is not one."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    listed = set(re.findall(r'`jaxkd\.(\w+)`', f.read().split('## The library', 1)[1]
                            .split('\n## ', 1)[0]))
  package = os.path.join(ROOT, 'jaxkd')
  modules = {name.removesuffix('.py') for name in os.listdir(package)
             if not name.startswith('_') and (name.endswith('.py') or
                                              os.path.isfile(os.path.join(package, name,
                                                                          '__init__.py')))}
  assert listed == modules, (f'missing from README: {sorted(modules - listed)}; '
                             f'not modules: {sorted(listed - modules)}')
