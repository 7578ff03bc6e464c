"""Loads a model exported by `jaxkd.export`: JAX, NumPy and JSON only, no jaxkd model code.

An export folder holds

    model.jaxexport   the bytes of `jax.export.Exported.serialize()`: the inference function
                      with the weights inside it as constants
    model.json        what the function is: model, classes, input shape, normalisation,
                      accuracy, the source checkpoint's fingerprint (`jaxkd.export.describe`)

The function maps a batch of raw images, uint8 `[batch, *input_shape]` (pixel values 0..255,
NHWC), to float32 logits `[batch, num_classes]`; the dataset's normalisation
`(x / 255 - mean) / std` happens inside it. A language model's (`input_dtype` int32 in
`model.json`) maps token ids `[batch, length]` to next-token logits `[batch, length, vocab]`.
The batch dimension is symbolic: any batch size works (each new size compiles once).

This module imports nothing from jaxkd but the CPU compile function, `accel/compile.py`
(JAX alone), which it loads from beside itself when it runs outside the package: a
deployment copies the two files (keeping `accel/compile.py` next to `serving.py`), or does
the same in three lines (without the CPU compiler options):

    exported = jax.export.deserialize(open('DIR/model.jaxexport', 'rb').read())
    description = json.load(open('DIR/model.json'))
    logits = exported.call(images_uint8)
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from typing import Any

import jax
import numpy as np

ARTIFACT = 'model.jaxexport'
DESCRIPTION = 'model.json'
CHECKSUM = 'artifact_sha256'  # model.json's record of model.jaxexport's SHA-256


def _load_compile():
  """`jaxkd.accel.compile` (the CPU compile function, JAX alone): imported from the package,
  or, where this file runs alone, loaded from `accel/compile.py` beside it."""
  if __package__:
    from jaxkd.accel import compile as compile_module
    return compile_module
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'accel', 'compile.py')
  spec = importlib.util.spec_from_file_location('_jaxkd_accel_compile', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# On CPU, `jit` compiles with XLA's own convolution kernels where this jaxlib allows.
_compile = _load_compile()


class Artifact:
  """An exported model, callable on uint8 image batches; checks their shape first.

  Attributes:
    exported: the deserialised `jax.export.Exported`.
    description: the JSON description written with it.
    input_shape: one example's shape, e.g. `(28, 28, 1)`.
  """

  def __init__(self, exported: jax.export.Exported, description: dict[str, Any],
               where: str = 'the artifact'):
    self.exported = exported
    self.description = description
    self.input_shape = tuple(description['input_shape'])
    self._where = where
    self._call = _compile.jit(exported.call)

  def __call__(self, images) -> jax.Array:
    """Logits float32 `[batch, num_classes]` for uint8 images `[batch, *input_shape]`; a
    language model's `[batch, length, vocab]` for integer token ids `[batch, length]`.

    Raises:
      ValueError: the batch is not uint8 (not integer ids in 0..vocab-1), or its
        per-example shape is not `input_shape`.
    """
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    if self.description.get('input_dtype') == 'int32':
      return self._call(self._check_tokens(images))
    expected = '[batch, ' + ', '.join(map(str, self.input_shape)) + ']'
    if images.ndim != len(self.input_shape) + 1 or tuple(images.shape[1:]) != self.input_shape:
      raise ValueError(
          f'{self._where} takes images of shape {expected} (NHWC); got a batch of shape '
          f'{list(images.shape)}. Resize the images, or export a model trained on this shape.')
    if images.dtype != np.uint8:
      raise ValueError(
          f'{self._where} takes uint8 pixel values 0..255 (it normalises them itself); got '
          f'{images.dtype}. Pass raw images, e.g. np.clip(x, 0, 255).astype(np.uint8).')
    return self._call(images)

  def _check_tokens(self, tokens):
    """`tokens` as int32, or ValueError naming what is wrong with them."""
    (length,), vocab = self.input_shape, self.description['num_classes']
    if tokens.ndim != 2 or tokens.shape[1] != length:
      raise ValueError(f'{self._where} takes token ids of shape [batch, {length}]; got '
                       f'{list(tokens.shape)}. Pad or cut the sequences to {length} tokens.')
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f'{self._where} takes integer token ids; got {tokens.dtype}.')
    if tokens.size and not 0 <= int(tokens.min()) <= int(tokens.max()) < vocab:
      raise ValueError(f'{self._where} reads token ids 0..{vocab - 1}; got ids '
                       f'{int(tokens.min())}..{int(tokens.max())} (another tokenizer?).')
    return tokens.astype(np.int32)


def load(directory: str) -> tuple[Artifact, dict[str, Any]]:
  """`(predict, description)` for the export folder `directory`.

  `predict(images)` returns the logits (see `Artifact`); `predict.exported` is the raw
  `jax.export.Exported`, `description` the folder's `model.json`.

  Raises:
    FileNotFoundError: `directory` lacks `model.jaxexport` or `model.json`.
    ValueError: the artifact does not match the SHA-256 recorded in `model.json`, or
      `model.json` contradicts it (input shape, number of classes).
  """
  paths = {name: os.path.join(directory, name) for name in (ARTIFACT, DESCRIPTION)}
  missing = [name for name, path in paths.items() if not os.path.isfile(path)]
  if missing:
    raise FileNotFoundError(f'{directory!r} is not an export folder: it lacks {missing} '
                            '(write one with experiments/export.py).')
  with open(paths[DESCRIPTION]) as f:
    description = json.load(f)
  with open(paths[ARTIFACT], 'rb') as f:
    blob = f.read()
  expected = description.get(CHECKSUM)
  if not expected:
    raise ValueError(f'{paths[DESCRIPTION]} records no {CHECKSUM}, so {ARTIFACT} cannot be '
                     'checked; export the model again (experiments/export.py).')
  if hashlib.sha256(blob).hexdigest() != expected:
    raise ValueError(f'{paths[ARTIFACT]} is damaged: its SHA-256 is not the {CHECKSUM} in '
                     f'{DESCRIPTION}. Export the model again, or restore the file.')
  exported = jax.export.deserialize(bytearray(blob))
  _check_description(exported, description, paths[DESCRIPTION])
  return Artifact(exported, description, where=f'The model in {directory}'), description


def _check_description(exported: jax.export.Exported, description: dict, where: str) -> None:
  """Raises ValueError where `model.json` contradicts the function: its input shape or its
  number of classes (an edited description is not believed)."""
  (images,), (logits,) = exported.in_avals, exported.out_avals
  actual = {'input_shape': [int(d) for d in images.shape[1:]], 'num_classes': int(logits.shape[-1])}
  said = {key: list(value) if isinstance(value, (list, tuple)) else value
          for key, value in description.items() if key in actual}
  wrong = [f'{key} {said[key]} (the function: {actual[key]})' for key in said
           if said[key] != actual[key]]
  if wrong:
    raise ValueError(f'{where} says {", ".join(wrong)}: it does not describe this artifact. '
                     'Export the model again.')


__all__ = ['ARTIFACT', 'Artifact', 'CHECKSUM', 'DESCRIPTION', 'load']
