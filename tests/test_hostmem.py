"""jaxkd.accel.hostmem: XLA's step buffers on transparent huge pages (fewer faults, same values)."""
import os
import platform
import subprocess
import sys

import pytest

from jaxkd.accel import hostmem

# A jitted program whose temporaries (~65 MB) glibc maps afresh every run; prints the minor
# page faults per run and a checksum of its output.
_PROGRAM = '''
import resource
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sort(jnp.sin(x) * 2.0)[::4] + 1.0)
x = jnp.arange(4_000_000, dtype=jnp.float32)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(2):
  y = f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2)
print(float(jnp.sum(y)))
'''

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def _run(tunables: str) -> list[str]:
  env = {**os.environ, 'GLIBC_TUNABLES': tunables}
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', _PROGRAM], env=env, capture_output=True,
                        text=True, timeout=120, check=True)
  return proc.stdout.split()


@pytest.mark.skipif(not GLIBC or hostmem._kernel_thp_mode() != 'madvise',
                    reason='glibc and the kernel in madvise mode for huge pages')
def test_huge_pages_remove_most_page_faults_and_change_no_value():
  huge, small = _run(hostmem.HUGE_PAGES_TUNABLE), _run('')
  # 4M float32 sorted and sliced: without huge pages every temporary page faults in again.
  assert float(small[0]) > 10_000
  assert float(huge[0]) < float(small[0]) / 3  # measured: 4,700 vs 20,000
  assert huge[1] == small[1]


@pytest.mark.skipif(not GLIBC, reason='reads a glibc tunable')
def test_huge_pages_reads_the_tunable(monkeypatch):
  monkeypatch.setattr(hostmem, '_kernel_thp_mode', lambda: 'madvise')
  assert hostmem.huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}) == 'on'
  assert hostmem.huge_pages(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1'}) == 'on'
  assert hostmem.huge_pages({}) == 'off (GLIBC_TUNABLES lacks glibc.malloc.hugetlb=1)'
  assert hostmem.huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}).startswith('off')
  monkeypatch.setattr(hostmem, '_kernel_thp_mode', lambda: 'never')
  assert hostmem.huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}).startswith(
      'off (the kernel')
  monkeypatch.setattr(hostmem, '_kernel_thp_mode', lambda: 'always')
  assert hostmem.huge_pages({}) == 'on (kernel: always)'


_TCMALLOC = next((path for path in ('/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4',
                                    '/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4')
                  if os.path.exists(path)), None)


def test_malloc_names_the_allocator(tmp_path):
  maps = tmp_path / 'maps'
  maps.write_text('7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n')
  assert hostmem.malloc(str(maps)) == (platform.libc_ver()[0] or 'libc')
  maps.write_text('7f00-7f01 r-xp 0 08:01 2 /usr/lib/libtcmalloc_minimal.so.4.5.10\n')
  assert hostmem.malloc(str(maps)) == 'tcmalloc'
  assert hostmem.malloc(str(tmp_path / 'absent')) == (platform.libc_ver()[0] or 'libc')


@pytest.mark.skipif(not GLIBC or _TCMALLOC is None, reason='glibc and libtcmalloc-minimal4')
def test_preloaded_tcmalloc_is_recorded_and_huge_pages_are_off():
  program = 'from jaxkd.accel import hostmem; print(hostmem.malloc(), "|", hostmem.huge_pages())'
  env = {**os.environ, 'GLIBC_TUNABLES': hostmem.HUGE_PAGES_TUNABLE, 'LD_PRELOAD': _TCMALLOC}
  out = subprocess.run([sys.executable, '-c', program], env=env, capture_output=True,
                       text=True, timeout=60, check=True).stdout.strip()
  assert out == "tcmalloc | off (malloc is tcmalloc, which does not read glibc's tunable)"
  env.pop('LD_PRELOAD')
  out = subprocess.run([sys.executable, '-c', program], env=env, capture_output=True,
                       text=True, timeout=60, check=True).stdout.strip()
  assert out.startswith('glibc | ') and 'tcmalloc' not in out
