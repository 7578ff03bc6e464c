"""Host memory on CPU: which allocator serves XLA's step buffers, and huge pages.

XLA:CPU allocates each step's temporaries afresh and frees them at the end. glibc's malloc
serves such blocks with a fresh ``mmap`` and returns them with ``munmap``, so every step
faults its temporaries in again, one 4 KiB page at a time. Two remedies, both chosen when
the process starts (values do not change):

- glibc's tunable ``glibc.malloc.hugetlb=1`` (``HUGE_PAGES_TUNABLE``) makes malloc ask for
  transparent huge pages: a 2 MiB page faults in once where 512 small ones did.
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python experiments/distill.py ...``; ``make demo``,
  ``make test`` and ``make bench`` set it.
- tcmalloc (``LD_PRELOAD=libtcmalloc_minimal.so.4``, Debian ``libtcmalloc-minimal4``) keeps
  freed blocks for reuse, so a step's temporaries fault in once per process; ``make bench``
  installs and preloads it.

`malloc()` and `huge_pages()` say which applies to this process, for a run's or a
benchmark's record. Measurements: docs/performance.md.
"""
from __future__ import annotations

import os
import platform

__all__ = ['HUGE_PAGES_TUNABLE', 'huge_pages', 'malloc']

HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'
# Allocators that replace the C library's malloc when preloaded (`LD_PRELOAD`).
_ALLOCATORS = ('tcmalloc', 'jemalloc', 'mimalloc')


def _kernel_thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), if readable."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def malloc(maps: str = '/proc/self/maps') -> str:
  """The allocator behind this process's ``malloc``, for a benchmark's or a run's record.

  ``'tcmalloc'``, ``'jemalloc'`` or ``'mimalloc'`` when that library is mapped into the
  process (preloaded: ``LD_PRELOAD=libtcmalloc_minimal.so.4``), else the C library's
  (``'glibc'``). Which one serves XLA's per-step temporaries decides how often they fault
  in afresh (module docstring).

  Args:
    maps: the process's memory map (Linux); elsewhere the C library's name is returned.
  """
  try:
    with open(maps) as f:
      text = f.read()
  except OSError:
    text = ''
  for name in _ALLOCATORS:
    if f'lib{name}' in text:
      return name
  return platform.libc_ver()[0] or 'libc'


def huge_pages(environ=None) -> str:
  """Whether this process's malloc puts large blocks on transparent huge pages.

  Args:
    environ: the environment to read (default ``os.environ``, i.e. this process's; the
      tunable is read by glibc once, when the process starts).

  Returns:
    ``'on'`` or ``'off (<why>)'``, for a benchmark's or a run's record.
  """
  environ = os.environ if environ is None else environ
  system, libc = platform.system(), platform.libc_ver()[0]
  if system != 'Linux' or libc != 'glibc':
    return f'off (not Linux with glibc: {system} {libc or "unknown libc"})'
  allocator = malloc()
  if allocator != 'glibc':
    return f'off (malloc is {allocator}, which does not read glibc\'s tunable)'
  mode = _kernel_thp_mode()
  if mode == 'never':
    return 'off (the kernel has transparent huge pages off: never)'
  tunables = environ.get('GLIBC_TUNABLES', '').split(':')
  if HUGE_PAGES_TUNABLE not in tunables:
    if mode == 'always':
      return 'on (kernel: always)'
    return f'off (GLIBC_TUNABLES lacks {HUGE_PAGES_TUNABLE})'
  return 'on'
