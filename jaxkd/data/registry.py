"""Dataset registry and the functions that prepare and read datasets by jaxkd name."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxkd.data._local import (RAW_SOURCE_FILE, DatasetInfo, LocalFileBuilder, default_data_dir,
                               sha256_of)
from jaxkd.data.cifar import JaxkdCifar10, JaxkdCifar100
from jaxkd.data.digits import JaxkdDigits
from jaxkd.data.fashion_mnist import JaxkdFashionMnist

_BUILDERS: dict[str, type[LocalFileBuilder]] = {
    cls.INFO.name: cls for cls in (JaxkdFashionMnist, JaxkdCifar10, JaxkdCifar100, JaxkdDigits)
}
DATASETS: dict[str, DatasetInfo] = {name: cls.INFO for name, cls in _BUILDERS.items()}


def info(name: str) -> DatasetInfo:
  """Static facts about dataset `name` (classes, image shape, mean/std, split sizes)."""
  if name not in DATASETS:
    raise KeyError(f"Unknown dataset {name!r}; known datasets: {sorted(DATASETS)}.")
  return DATASETS[name]


def builder(name: str, *, data_dir: str | os.PathLike | None = None,
            raw_dir: str | os.PathLike | None = None,
            allow_download: bool | None = None) -> LocalFileBuilder:
  """The TFDS builder of dataset `name`, writing under `data_dir`."""
  cls = _BUILDERS[info(name).name]
  with _scratch_tempdir():
    return cls(data_dir=os.fspath(default_data_dir(data_dir)), raw_dir=raw_dir,
               allow_download=allow_download)


@contextlib.contextmanager
def _scratch_tempdir() -> Iterator[None]:
  """Points `tempfile` at a folder removed on exit: TFDS's `DatasetInfo.initialize_from_bucket`
  leaves an empty `tmp*tfds` folder in the system temp folder per builder of a dataset that
  is not built yet."""
  saved = tempfile.tempdir
  with tempfile.TemporaryDirectory(prefix='jaxkd-tfds-') as scratch:
    tempfile.tempdir = scratch
    try:
      yield
    finally:
      tempfile.tempdir = saved


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> LocalFileBuilder:
  """Builds the ArrayRecord dataset `name` unless already built; returns its builder.

  Args:
    name: a key of `DATASETS`.
    data_dir: where TFDS datasets live; default $JAXKD_DATA_DIR or ~/tensorflow_datasets.
    raw_dir: folder holding the raw files; default the dataset's environment
      variable (e.g. $JAXKD_FASHION_MNIST_DIR), else its default folders.
    allow_download: download the raw files from their official location when no
      folder holds them; default True unless $JAXKD_OFFLINE is set.

  Raises:
    DataNotFoundError: no folder holds the raw files and downloading is off or failed.
    CorruptDataError: a raw file is malformed.
    ValueError: `raw_dir` or the dataset's environment variable names other raw files than
      those the built dataset was made from.
  """
  b = builder(name, data_dir=data_dir, raw_dir=raw_dir, allow_download=allow_download)
  b.check_raw_source()
  b.download_and_prepare()  # Returns at once when the dataset is already built.
  b.record_raw_source()
  return b


def source(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
           raw_dir: str | os.PathLike | None = None,
           allow_download: bool | None = None) -> Sequence[dict[str, Any]]:
  """A random-access TFDS data source of `split`, preparing the dataset if needed.

  `split` is `'train'`, `'test'` or a TFDS slice such as `'train[:50000]'`,
  `'train[50000:]'` or `'train[:90%]'` (e.g. to hold out validation data). Items
  are dicts `{'image': uint8 [H, W, C], 'label': int}`.
  """
  b = prepare(name, data_dir=data_dir, raw_dir=raw_dir, allow_download=allow_download)
  return b.as_data_source(split=split)


def dataset_sha256(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
) -> str:
  """The SHA-256 of dataset `name`: of its raw files' names and SHA-256s (sorted), those the
  built dataset under `data_dir` was made from (recorded at build), else those found now.

  Two runs with one value read the same bytes; a run's final metrics record it.

  Raises:
    DataNotFoundError: the dataset is neither built nor found.
  """
  b = builder(name, data_dir=data_dir, raw_dir=raw_dir, allow_download=False)
  record = pathlib.Path(b.data_dir) / RAW_SOURCE_FILE
  if record.exists():
    files = json.loads(record.read_text())["sha256"]
  else:
    found = b.find_raw_files()
    if found is None:
      raise b._not_found_error("it is not built either")
    files = {file: sha256_of(path) for file, path in found.items()}
  return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def load_arrays(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """The whole `split` as (uint8 images [N, H, W, C], int32 labels [N]), in file order."""
  data = source(name, split, data_dir=data_dir, raw_dir=raw_dir,
                allow_download=allow_download)
  records = data.__getitems__(range(len(data))) if len(data) else []
  h, w, c = info(name).image_shape
  images = np.empty((len(records), h, w, c), np.uint8)
  for i, record in enumerate(records):
    images[i] = record["image"]
  labels = np.fromiter((r["label"] for r in records), np.int32, count=len(records))
  return images, labels


def subset_classes(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    *,
    per_class: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
  """Keeps examples of `classes`, relabelled 0..k-1 in the order given.

  With `per_class`, keeps that many examples of each class, chosen by a seeded
  permutation (the same seed gives the same examples); the kept examples stay in
  their original order. E.g. a target task of classes 5-9 with 100 labels each:
  `subset_classes(x, y, range(5, 10), per_class=100)`.

  Raises:
    ValueError: a class is repeated, or has fewer than `per_class` examples.
  """
  if any(isinstance(c, bool) or int(c) != c or c < 0 for c in classes):
    raise ValueError(f"classes must be class indices >= 0, got {list(classes)}.")
  classes = [int(c) for c in classes]
  if len(set(classes)) != len(classes):
    raise ValueError(f"classes must be distinct, got {classes}.")
  labels = np.asarray(labels)
  absent = [c for c in classes if not np.any(labels == c)]
  if absent:
    raise ValueError(f"classes {absent} have no examples (labels run from {labels.min()} to "
                     f"{labels.max()}); give classes present in the data.")
  keep = np.zeros(len(labels), bool)
  for c in classes:
    (members,) = np.nonzero(labels == c)
    if per_class is not None:
      if len(members) < per_class:
        raise ValueError(f"class {c} has {len(members)} examples, fewer than "
                         f"per_class={per_class}.")
      members = np.random.default_rng([seed, c]).permutation(members)[:per_class]
    keep[members] = True
  relabel = np.full(max(classes + [int(labels.max(initial=0))]) + 1, -1, np.int32)
  relabel[classes] = np.arange(len(classes), dtype=np.int32)
  return np.asarray(images)[keep], relabel[labels[keep]]
