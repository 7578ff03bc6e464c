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

Huge pages have a cost when other code churns memory too: with the kernel's default
``defrag`` setting (``madvise``) each huge-page fault may compact memory first. Timing
ResNet-20's student step with PyTorch's peer step in the same process, one after the other
(as ``benchmarks/throughput.py --peer torch`` does; AMD EPYC, 2 cores, 7 steps each,
2026-12-03, a throwaway script, ``ru_minflt``/``ru_stime`` per step):

=====================================  ==============  ===============  ================
allocator                              jaxkd alone     jaxkd after      PyTorch alone /
                                                       each torch step  interleaved
=====================================  ==============  ===============  ================
glibc, no tunable                      935 ms, 151 k   (not run)        -
                                       faults
glibc, hugetlb=1                       754 ms, 1.1 k   1454 ms, 1.1 k   678 / 821 ms
                                       faults, 81 ms   faults, 1440 ms
                                       system          system
tcmalloc (``LD_PRELOAD``)              680 ms, 434     670 ms, 693      666 / 655 ms
                                       faults, 7 ms    faults, 7 ms
                                       system          system
jemalloc (``LD_PRELOAD``)              918 ms, 152 k   847 ms           1450 / 1537 ms
=====================================  ==============  ===============  ================

(The table's figures come from a throwaway script; the benchmark's own interleaved timing
compares the same: ``python benchmarks/throughput.py --pairs resnet --modes student --peer
torch`` with and without ``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4``;
its JSON records ``malloc`` and ``huge_pages``.)
tcmalloc keeps freed blocks for reuse, so a step's temporaries fault in once per process:
the fastest and steadiest of the four for both frameworks. It is a system library
(Debian: ``libtcmalloc-minimal4``), so it is the caller's choice: ``make bench`` preloads it
where it is installed, and :func:`malloc` says which allocator a process runs with.

What was tried instead: ``mallopt`` at run time (one arena, no ``mmap``, no trimming) removes
every fault (ResNet-20 1.62-1.74 s, CRD 0.25 s) but puts all threads on one arena lock, and
steps of many small operations slowed by 13 % (NST 28-30 -> 32-34 ms); not used.
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
