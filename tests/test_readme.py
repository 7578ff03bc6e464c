"""Every Python snippet in README.md runs as written."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, 'README.md')) as f:
  SNIPPETS = re.findall(r'```python\n(.*?)```', f.read(), re.S)


def test_readme_has_snippets():
  assert SNIPPETS


@pytest.mark.parametrize('index', range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path):
  result = subprocess.run([sys.executable, '-c', SNIPPETS[index]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
