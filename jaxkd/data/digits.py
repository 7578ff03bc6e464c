"""UCI handwritten digits (the 1,797 8x8 images scikit-learn ships), in MNIST's geometry.

The raw file is `digits.csv.gz` from scikit-learn's wheel (`sklearn/datasets/data/`): one
row per image, 64 pixel values 0..16 in row-major order and then the label 0..9, comma
separated, no header. It is found inside the installed scikit-learn package (which is
never imported) or in the folder named by `JAXKD_DIGITS_DIR`; it is never downloaded.

Geometry, as MNIST's (digits 20x20 centred in 28x28), so a model trained on Fashion-MNIST
takes them unchanged: values are scaled from 0..16 to 0..255, each image is resized from
8x8 to 20x20 by bilinear interpolation with half-pixel centres and edge clamping (the
convention of `jax.image.resize(..., 'linear')` when upsampling), rounded half up to uint8,
and padded with 4 zero pixels on every side: uint8 [28, 28, 1]. The interpolation is done
in exact integer arithmetic, so every platform gives the same bytes.

Splits: the data has no official split. `test` holds every third example of each class in
file order (the examples whose rank among their class's examples, counting from 0 in file
order, is 2 modulo 3); `train` holds the others. Both keep file order.
"""

from __future__ import annotations

import gzip
import importlib.util
import pathlib
from collections.abc import Mapping

import numpy as np

from jaxkd.data._local import CorruptDataError, DatasetInfo, LocalFileBuilder

RAW_FILE = "digits.csv.gz"
SIDE, LEVELS = 8, 16  # raw images are 8x8 with values 0..16
RESIZED, PAD = 20, 4  # 20x20 digits centred in 28x28, as MNIST's
TEST_EVERY = 3  # within each class, every third example is a test example


def sklearn_data_dir() -> pathlib.Path | None:
  """`sklearn/datasets/data` of the installed scikit-learn, found without importing it."""
  try:
    spec = importlib.util.find_spec("sklearn")
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.submodule_search_locations:
    return None
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def read_digits(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads `digits.csv.gz`: (uint8 [N, 8, 8] values 0..16, int64 [N] labels 0..9)."""
  path = pathlib.Path(path)
  try:
    with gzip.open(path, "rt", encoding="ascii") as f:
      lines = f.read().splitlines()
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise CorruptDataError(f"Cannot read {path}: {e}. Replace the file.") from e
  rows, line_numbers, columns = [], [], SIDE * SIDE + 1
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    fields = line.split(",")
    if len(fields) != columns:
      raise CorruptDataError(f"{path} line {number} has {len(fields)} columns, expected "
                             f"{columns} (64 pixel values and a label). Replace the file.")
    try:
      rows.append([int(field) for field in fields])
      line_numbers.append(number)
    except ValueError as e:
      raise CorruptDataError(f"{path} line {number}: {e}. Replace the file.") from e
  if not rows:
    raise CorruptDataError(f"{path} holds no rows. Replace the file.")
  table = np.asarray(rows, np.int64)
  pixels, labels = table[:, :-1], table[:, -1]
  for what, values, high in (("pixel values", pixels, LEVELS), ("labels", labels, 9)):
    bad = np.argwhere((values < 0) | (values > high))
    if len(bad):
      line = line_numbers[bad[0][0]]
      raise CorruptDataError(f"{path}: {what} must be in 0..{high}, but line {line} holds "
                             f"{values[tuple(bad[0])]}. Replace the file.")
  return pixels.reshape(-1, SIDE, SIDE).astype(np.uint8), labels


def _resize_weights(size_in: int, size_out: int) -> tuple[np.ndarray, int]:
  """Integer bilinear weights [size_out, size_in] (half-pixel centres, edges clamped) and
  their common denominator: output i samples input position ((2i+1)*in - out) / (2*out)."""
  denominator = 2 * size_out
  weights = np.zeros((size_out, size_in), np.int64)
  for i in range(size_out):
    position = min(max((2 * i + 1) * size_in - size_out, 0), (size_in - 1) * denominator)
    left, offset = divmod(position, denominator)
    weights[i, left] += denominator - offset
    weights[i, min(left + 1, size_in - 1)] += offset
  return weights, denominator


def to_mnist_geometry(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 8, 8] values 0..16 -> uint8 [N, 28, 28, 1] values 0..255 (module docstring)."""
  weights, denominator = _resize_weights(SIDE, RESIZED)
  # The value at a pixel is numerator / scale exactly; rounded half up in integers.
  numerator = np.einsum("ia,nab,jb->nij", weights, images.astype(np.int64), weights) * 255
  scale = denominator * denominator * LEVELS
  resized = (2 * numerator + scale) // (2 * scale)
  padded = np.pad(resized, ((0, 0), (PAD, PAD), (PAD, PAD)))
  return padded.astype(np.uint8)[..., None]


def in_test_split(labels: np.ndarray) -> np.ndarray:
  """True for the test examples: those whose within-class rank in file order is 2 mod 3."""
  rank = np.empty(len(labels), np.int64)
  for label in np.unique(labels):
    (members,) = np.nonzero(labels == label)
    rank[members] = np.arange(len(members))
  return rank % TEST_EVERY == TEST_EVERY - 1


class JaxkdDigits(LocalFileBuilder):
  """UCI handwritten digits (Alpaydin & Kaynak, 1998; scikit-learn's copy), registered in
  TFDS as `jaxkd_digits`: 28x28x1 uint8 images, fixed class-stratified train/test split."""

  INFO = DatasetInfo(
      name="digits",
      class_names=tuple(str(d) for d in range(10)),
      image_shape=(28, 28, 1),
      mean=(0.1555,),  # of the train split's 28x28 images
      std=(0.2770,),
      splits={"train": 1201, "test": 596},
      env_var="JAXKD_DIGITS_DIR",
      builder_name="jaxkd_digits",
  )
  RAW_FILES = (RAW_FILE,)
  INSTALL_HINT = ("pip install scikit-learn (or pip install jaxkd[digits]): its wheel "
                  f"holds sklearn/datasets/data/{RAW_FILE}")
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"
  CITATION = ("E. Alpaydin, C. Kaynak. Optical Recognition of Handwritten Digits. UCI "
              "Machine Learning Repository, 1998. https://doi.org/10.24432/C50P49")

  def default_dirs(self) -> tuple[pathlib.Path, ...]:
    found = sklearn_data_dir()
    return (found,) if found is not None else ()

  def _read_split(self, files: Mapping[str, pathlib.Path], split: str):
    images, labels = read_digits(files[RAW_FILE])
    total = sum(self.INFO.splits.values())
    if len(labels) != total:
      raise CorruptDataError(f"{files[RAW_FILE]} holds {len(labels)} rows, expected {total} "
                             "(scikit-learn's copy of the UCI digits). Replace the file.")
    keep = in_test_split(labels) == (split == "test")
    return to_mnist_geometry(images[keep]), labels[keep]
