"""The docs follow the package: the method table lists the registry, the API reference every
public module (docs/hooks.py), and the docstrings' reST turns into Markdown."""
import importlib.util
import os
import re

import pytest

from jaxkd.losses import LOSSES, Paper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
  """A module of docs/ (not a package) by file name."""
  spec = importlib.util.spec_from_file_location(f'docs_{name}',
                                                os.path.join(ROOT, 'docs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gen_methods = _load('gen_methods')
hooks = _load('hooks')


def _names(table: str) -> list[str]:
  return re.findall(r'^\| `(\w+)` \|', table, re.M)


def test_generated_method_table_lists_every_registry_name():
  table = gen_methods.methods_table()
  assert _names(table) == list(LOSSES)
  dkd = next(line for line in table.splitlines() if line.startswith('| `dkd` |'))
  assert '[`DKD`](api/losses.md#jaxkd.losses.DKD)' in dkd
  assert '`temperature=4.0`, `target_weight=1.0`, `non_target_weight=8.0`' in dkd


def test_checked_in_method_table_lists_every_registry_name():
  """docs/methods.md holds the table as `python docs/gen_methods.py` last wrote it."""
  with open(gen_methods.METHODS_MD) as f:
    text = f.read()
  table = text.split(gen_methods.BEGIN)[1].split(gen_methods.END)[0]
  missing = sorted(set(LOSSES) - set(_names(table)))
  assert not missing, f'run python docs/gen_methods.py: {missing} are not in docs/methods.md'


def test_method_table_takes_the_terms_attributes():
  class Fake:
    family = 'logit'
    paper = Paper('Someone et al. 2099', 'https://example.org/paper')

    def __init__(self, *, temperature: float = 2.0, taps=('a', 'b')):
      del temperature, taps

  table = gen_methods.methods_table({'fake': Fake})
  assert table.splitlines()[-1] == (
      '| `fake` | [`Fake`](api/losses.md) | logit | '  # not re-exported: the page
      "[Someone et al. 2099](https://example.org/paper) | `temperature=2.0`, `taps=('a', 'b')` |")


def test_render_replaces_only_the_marked_table():
  begin, end = gen_methods.BEGIN, gen_methods.END
  text = f'intro\n{begin}\nold\n{end}\nend\n'
  assert gen_methods.render(text, 'new') == f'intro\n{begin}\nnew\n{end}\nend\n'
  with pytest.raises(ValueError, match='methods:begin'):
    gen_methods.render('no markers\n', 'new')


def test_api_reference_covers_every_public_module():
  """The nav lists a page per public module; each checked-in page documents one of them."""
  modules = hooks.public_modules()
  assert {'losses', 'models', 'distill', 'transfer', 'checkpoint'} <= set(modules)
  config = hooks.on_config({'nav': [{'Home': 'index.md'}, {'API reference': 'api/index.md'}]})
  api = config['nav'][1]['API reference']
  assert api[0] == 'api/index.md'
  assert [list(entry.values())[0] for entry in api[1:]] == [f'api/{m}.md' for m in modules]
  for page in os.listdir(os.path.join(ROOT, 'docs', 'api')):
    with open(os.path.join(ROOT, 'docs', 'api', page)) as f:
      documented = re.findall(r'^::: jaxkd\.(\w+)', f.read(), re.M)
    assert documented == [page.removesuffix('.md')], page
    assert documented[0] in modules, f'docs/api/{page} documents no module of jaxkd'


def test_links_that_leave_docs_point_into_the_repository():
  assert hooks._repository_path('../experiments/results/x.png', 'results.md') == (
      'experiments/results/x.png')
  assert hooks._repository_path('../../benchmarks/README.md', 'api/x.md') == (
      'benchmarks/README.md')
  assert hooks._repository_path('methods.md', 'index.md') is None
  assert hooks._repository_path('../methods.md', 'api/x.md') is None
  assert hooks._repository_path('https://arxiv.org/abs/1', 'index.md') is None


def test_docstrings_rest_becomes_markdown():
  griffe_rst = pytest.importorskip('griffe') and _load('griffe_rst')
  text = ('Loss.\n\n.. math::\n  a = b\n\n  + c\n\nwith `Paper one\n  title <https://x.org/1>`_'
          ' and :func:`kd_loss`.\n\nArgs:\n  x: ``[B]`` values (computed in\n    >= float32).')
  assert griffe_rst.rst_to_markdown(text) == (
      'Loss.\n\n$$\na = b\n\n+ c\n$$\n\nwith [Paper one title](https://x.org/1) and '
      '`kd_loss`.\n\nArgs:\n  x: ``[B]`` values (computed in\n    \\>= float32).')


def test_readme_links_resolve():
  """README's relative links name files of the repository (or a guide still to be written,
  which the site shows as a placeholder: `hooks.PENDING`)."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    targets = re.findall(r'\]\(([^)#\s]+)', f.read())
  local = [target for target in targets if '://' not in target]
  assert 'docs/methods.md' in local
  missing = [target for target in local if not os.path.exists(os.path.join(ROOT, target))
             and target.removeprefix('docs/') not in hooks.PENDING]
  assert not missing, missing
