"""'/'-joined paths into variable trees (`params/head/kernel`), and regex patterns over them.

One spelling of a path for every module that names leaves: transfer (`dont_load`, `frozen`),
the fine-tuning step, feature taps and tests.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax

PyTree = Any


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(key_path) -> str:
  """A JAX key path as a '/'-joined string: `params/head/kernel`."""
  return '/'.join(_key_name(k) for k in key_path)


def flatten(tree: PyTree, is_leaf: Callable | None = None) -> dict[str, Any]:
  """`{'params/head/kernel': leaf, ...}` (empty sub-dicts have no entries)."""
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_leaf)
  return {path_str(path): leaf for path, leaf in leaves}


def matches(path: str, patterns: Sequence[str]) -> bool:
  """Whether `path` fully matches any of the regex `patterns`."""
  return any(re.fullmatch(p, path) for p in patterns)


def check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
  """The patterns as a tuple, each compiled once (a bad regex raises ValueError now)."""
  if isinstance(patterns, str):
    raise TypeError(f'Pass patterns as a sequence of regexes, not the string {patterns!r}.')
  for p in patterns:
    try:
      re.compile(p)
    except re.error as error:
      raise ValueError(f'{p!r} is not a valid regular expression ({error}); patterns are '
                       "Python regexes over '/'-joined paths, e.g. 'params/head/.*'.") from None
  return tuple(patterns)


def check_patterns_match(setting: str, patterns: Sequence[str], paths: Sequence[str]) -> None:
  """Raises ValueError naming `setting` when one of `patterns` fully matches none of `paths`
  (a pattern that matches nothing freezes or skips nothing: almost surely a typo)."""
  unused = [p for p in patterns if not any(re.fullmatch(p, path) for path in paths)]
  if unused:
    raise ValueError(f'{setting} pattern(s) {unused} match no path; paths look like '
                     f'{sorted(paths)[:4]}.')


def differences(a: dict, b: dict, *, ignore: Sequence[str] = ()) -> dict[str, tuple[Any, Any]]:
  """`{dotted setting: (a's, b's)}` for each setting of two nested dicts that differs, with
  tuples equal to lists (JSON turns one into the other) and None equal to empty; top-level
  keys in `ignore` are not compared."""
  flat_a, flat_b = _dotted(a), _dotted(b)
  keys = sorted(k for k in set(flat_a) | set(flat_b) if k.split('.')[0] not in ignore)
  return {k: (flat_a.get(k), flat_b.get(k)) for k in keys
          if _canonical(flat_a.get(k)) != _canonical(flat_b.get(k))}


def _dotted(record: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in record.items():
    if isinstance(value, dict) and value:
      flat.update(_dotted(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _canonical(value):
  if isinstance(value, dict):
    return {k: _canonical(v) for k, v in value.items()} or None
  if isinstance(value, (list, tuple)):
    return [_canonical(v) for v in value] or None
  return value
