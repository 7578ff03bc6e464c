"""Host memory on CPU: XLA's step buffers on transparent huge pages.

XLA:CPU allocates each step's temporaries afresh (hundreds of MB for a ResNet step at batch
256) and frees them at the end. glibc's malloc serves such blocks with a fresh ``mmap`` (the
thread that runs a step allocates from its own arena, which maps any block over 64 MB anew
whatever ``mallopt`` says) and returns them with ``munmap``; so every step faults its
temporaries in again, one 4 KiB page at a time, each zero-filled by the kernel. With
glibc's tunable ``glibc.malloc.hugetlb=1`` malloc asks for transparent huge pages
(``madvise``), and a 2 MiB page faults in once where 512 small ones did. It must be in the
environment when the process starts:

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python experiments/distill.py ...

``make demo``, ``make test`` and ``make bench`` set it (``HUGE_PAGES_TUNABLE``); a script
started another way runs as before, only slower where steps have large temporaries. Values
do not change. Measured on a 2-core AMD EPYC VM (benchmarks/ pairs, batch 256, float32,
separate processes, two runs each; ``minflt`` from ``getrusage``):

===================================  ===================  ==================  =============
step                                 page faults / step   system time / step  wall / step
===================================  ===================  ==================  =============
ResNet-20 student, without           174,500              0.44-0.46 s         1.87-1.95 s
ResNet-20 student, hugetlb=1         1,100-1,300          0.15 s              1.67-1.70 s
LeNet pair with CRD, without         93,600               0.22 s              0.34-0.37 s
LeNet pair with CRD, hugetlb=1       550                  0.08 s              0.33 s
LeNet pair with NST, without         < 100                0.00 s              28-31 ms
LeNet pair with NST, hugetlb=1       < 200                0.00 s              29 ms
===================================  ===================  ==================  =============

The table's figures come from a throwaway script timing a few steps in each process. To
rerun the comparison: ``GLIBC_TUNABLES= python benchmarks/throughput.py --pairs resnet
--modes student --windows 3`` and the same with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(2026-12-03, same VM, after the tap-loop change: 1939 vs 1318 ms a step).

What was tried instead: ``mallopt`` at run time (one arena, no ``mmap``, no trimming) removes
every fault (ResNet-20 1.62-1.74 s, CRD 0.25 s) but puts all threads on one arena lock, and
steps of many small operations slowed by 13 % (NST 28-30 -> 32-34 ms); not used.
"""
from __future__ import annotations

import os
import platform

__all__ = ['HUGE_PAGES_TUNABLE', 'huge_pages']

HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1'
_THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _kernel_thp_mode() -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), if readable."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


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
  mode = _kernel_thp_mode()
  if mode == 'never':
    return 'off (the kernel has transparent huge pages off: never)'
  tunables = environ.get('GLIBC_TUNABLES', '').split(':')
  if HUGE_PAGES_TUNABLE not in tunables:
    if mode == 'always':
      return 'on (kernel: always)'
    return f'off (GLIBC_TUNABLES lacks {HUGE_PAGES_TUNABLE})'
  return 'on'
