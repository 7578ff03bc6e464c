"""Sequence-level knowledge distillation (Kim & Rush 2016, "Sequence-Level Knowledge
Distillation"): the student learns the teacher's own continuations, `-log q(y^ | x)` with `y^`
the teacher's greedy or beam output, instead of (or, "word-KD", beside) its per-token
distributions.

    settings = seqkd.check_settings({'decode': 'beam', 'num_beams': 4, 'prompt_len': 32,
                                     'new_tokens': 96}, seq_len=256)
    rows = seqkd.teacher_dataset(directory, teacher=teacher, teacher_variables=variables,
                                 rows=train_rows, settings=settings, sep_id=tok.sep_id,
                                 pad_id=tok.pad_id, provenance={...})
    # {'tokens' int32 [N, prompt_len + new_tokens], 'mask' float32 [N, ...]}, `text.pack`'s
    # convention: mask[:, j] = 1 where tokens[:, j + 1] is a continuation token

Prompts are the first `prompt_len` tokens of each packed training row (fewer in a last,
padded row); the teacher continues each for up to `new_tokens` tokens, stopping after the
separator (its end of document, included as a target). The loss mask covers the continuation
only: the prompt is the condition, never a target.

The dataset is written once, to `directory`: `tokens.npy`, `mask.npy` and `provenance.json`
(the caller's provenance: teacher and tokenizer fingerprints, the corpus split's SHA-256, ...,
plus the decoding settings and the arrays' SHA-256). A later run reads it when every entry is
the same as its own and refuses it otherwise, naming the entries that differ; the language-
model recipe's `config.seqkd` (`jaxkd.recipes.language_model`) drives it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time

import numpy as np

from jaxkd import distributed, generate
from jaxkd.paths import differences

FORMAT = 'jaxkd-seqkd/1'
DECODES = ('greedy', 'beam')
# `config.seqkd`'s settings and their defaults; `batch_size` (prompts decoded at a time) and
# `data_dir` (where the dataset lives; default WORKDIR/seqkd_data) change no token.
DEFAULTS = {'decode': 'greedy', 'num_beams': 4, 'length_penalty': 0.0, 'prompt_len': 32,
            'new_tokens': 96, 'batch_size': 64, 'data_dir': ''}
_NOT_PROVENANCE = ('batch_size', 'data_dir')


def check_settings(seqkd: dict, *, seq_len: int) -> dict:
  """`seqkd` with the defaults filled in, checked: one ValueError naming a bad setting."""
  unknown = sorted(set(seqkd) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'config.seqkd: unknown settings {unknown}; known: {sorted(DEFAULTS)}.')
  settings = {**DEFAULTS, **seqkd}
  if settings['decode'] not in DECODES:
    raise ValueError(f"config.seqkd.decode={settings['decode']!r}; known: {list(DECODES)}.")
  for name in ('num_beams', 'prompt_len', 'new_tokens', 'batch_size'):
    if not isinstance(settings[name], int) or settings[name] < 1:
      raise ValueError(f'config.seqkd.{name}={settings[name]!r} must be an integer >= 1.')
  total = settings['prompt_len'] + settings['new_tokens']
  if total > seq_len:
    raise ValueError(f"config.seqkd: prompt_len + new_tokens = {total} exceeds seq_len="
                     f'{seq_len} (the longest sequence the models read); lower one of them.')
  if settings['decode'] == 'greedy':
    settings.update(num_beams=1, length_penalty=0.0)  # unused: one greedy dataset, one record
  return settings


def prompts_of(rows: dict, prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
  """`(prompts int32 [N, prompt_len], lengths int32 [N])`: each packed row's first
  `prompt_len` tokens, of which the real ones (a row's first token and every masked target)
  make the prompt."""
  tokens, mask = np.asarray(rows['tokens']), np.asarray(rows['mask'])
  real = 1 + mask[:, :prompt_len - 1].sum(axis=1)
  return tokens[:, :prompt_len].astype(np.int32), np.minimum(real, prompt_len).astype(np.int32)


def decode_rows(teacher, teacher_variables, prompts, lengths, *, settings: dict, sep_id: int,
                pad_id: int) -> dict:
  """The teacher's continuations as training rows (`text.pack`'s convention; see the module
  docstring), decoded `settings['batch_size']` prompts at a time (the last batch filled up
  with copies, so one program serves every batch)."""
  size = settings['batch_size']
  common = dict(max_new_tokens=settings['new_tokens'], stop_token=sep_id, pad_token=pad_id)
  tokens, masks = [], []
  for start in range(0, len(prompts), size):
    index = np.minimum(np.arange(start, start + size), len(prompts) - 1)
    if settings['decode'] == 'beam':
      out = generate.beam_search(teacher, teacher_variables, prompts[index], lengths[index],
                                 num_beams=settings['num_beams'],
                                 length_penalty=settings['length_penalty'], **common)
    else:
      out = generate.greedy(teacher, teacher_variables, prompts[index], lengths[index], **common)
    keep = min(size, len(prompts) - start)
    rows = generate.as_rows(out)
    tokens.append(np.asarray(rows['tokens'])[:keep])
    masks.append(np.asarray(rows['mask'])[:keep])
  return {'tokens': np.concatenate(tokens).astype(np.int32),
          'mask': np.concatenate(masks).astype(np.float32)}


def _sha256(array: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def read(directory: str, *, provenance: dict) -> dict:
  """The rows stored in `directory`, when its recorded provenance equals `provenance` (the
  decoding settings included) and the arrays their SHA-256.

  Raises:
    ValueError: the dataset was made otherwise: names each entry, stored and wanted.
  """
  with open(os.path.join(directory, 'provenance.json')) as f:
    record = json.load(f)
  stored = record['provenance']
  changed = differences(stored, provenance)
  if changed:
    listed = '; '.join(f'{key}: stored {a!r}, this run {b!r}' for key, (a, b) in changed.items())
    raise ValueError(f'The sequence-level KD data in {directory} was made otherwise ({listed}). '
                     'Point config.seqkd.data_dir at another folder, or remove this one to '
                     'decode again.')
  rows = {name: np.load(os.path.join(directory, f'{name}.npy')) for name in ('tokens', 'mask')}
  for name, array in rows.items():
    if _sha256(array) != record['sha256'][name]:
      raise ValueError(f'{directory}/{name}.npy does not match its SHA-256 in provenance.json '
                       '(damaged or edited); remove the folder to decode again.')
  return rows


def teacher_dataset(directory: str, *, teacher, teacher_variables, rows: dict, settings: dict,
                    sep_id: int, pad_id: int, provenance: dict) -> dict:
  """The teacher's sequences for `rows`' prompts: read from `directory` when written there
  before with the same provenance (`read`), else decoded and written (by the main process).

  Args:
    directory: the dataset's folder.
    teacher, teacher_variables: the model that writes the sequences.
    rows: packed training rows (`text.load`'s `tokens`, `mask`).
    settings: `check_settings`'s.
    sep_id, pad_id: the tokenizer's separator (where a continuation stops) and padding.
    provenance: what makes the data what it is besides the decoding settings (JSON-able):
      at least the teacher's fingerprint, the tokenizer's and the corpus split's SHA-256.

  Returns:
    `{'tokens', 'mask'}` rows (see the module docstring).
  """
  provenance = {**provenance, 'format': FORMAT, 'rows': len(rows['tokens']),
                'decoding': {k: v for k, v in settings.items() if k not in _NOT_PROVENANCE}}
  if os.path.exists(os.path.join(directory, 'provenance.json')):
    return read(directory, provenance=provenance)
  start = time.perf_counter()
  prompts, lengths = prompts_of(rows, settings['prompt_len'])
  data = decode_rows(teacher, teacher_variables, prompts, lengths, settings=settings,
                     sep_id=sep_id, pad_id=pad_id)
  record = {'provenance': provenance, 'sha256': {k: _sha256(v) for k, v in data.items()},
            'generated_tokens': int(data['mask'].sum()),
            'seconds': time.perf_counter() - start}
  if distributed.is_main():
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.seqkd-', dir=parent)
    try:
      for name, array in data.items():
        np.save(os.path.join(tmp, f'{name}.npy'), array)
      with open(os.path.join(tmp, 'provenance.json'), 'w') as f:
        json.dump(record, f, indent=1, sort_keys=True)
      os.replace(tmp, directory)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return data
