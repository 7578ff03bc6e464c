"""The `digits` dataset built from scikit-learn's real `digits.csv.gz`, checked against an
independent NumPy reading of the same file; corrupt and missing raw files."""

import gzip
import importlib.metadata
import json
import pathlib
import sys
from fractions import Fraction

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd import data
from jaxkd.data import digits
from jaxkd.data._local import RAW_SOURCE_FILE, sha256_of
from jaxkd.recipes.components import load_task
from jaxkd.recipes.validate import check_config

# Per class 0..9 (178, 182, 177, 183, 181, 182, 181, 179, 174, 180 examples): a third in test.
TRAIN_COUNTS = [119, 122, 118, 122, 121, 122, 121, 120, 116, 120]
TEST_COUNTS = [59, 60, 59, 61, 60, 60, 60, 59, 58, 60]


def _sklearn_file():
  """Where pip put the file, found through the distribution's metadata, not an import."""
  try:
    dist = importlib.metadata.distribution("scikit-learn")
  except importlib.metadata.PackageNotFoundError:
    return None
  path = dist.locate_file("sklearn/datasets/data/digits.csv.gz")
  return path if path.is_file() else None


REAL_FILE = _sklearn_file()
needs_sklearn = pytest.mark.skipif(REAL_FILE is None,
                                   reason="scikit-learn (pip install jaxkd[digits]) is absent")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
  """Tests see none of the user's data settings, and never download."""
  for var in ("JAXKD_DATA_DIR", "JAXKD_DIGITS_DIR"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAXKD_OFFLINE", "1")


@pytest.fixture(scope="module")
def raw():
  """The real file read independently: (float pixels [N, 8, 8], int labels [N])."""
  table = np.loadtxt(REAL_FILE, delimiter=",", dtype=np.int64)
  return table[:, :64].reshape(-1, 8, 8), table[:, 64]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The dataset prepared once from the default location: (data_dir, {split: arrays})."""
  if REAL_FILE is None:
    pytest.skip("scikit-learn is absent")
  data_dir = tmp_path_factory.mktemp("digits") / "tfds"
  with pytest.MonkeyPatch.context() as mp:
    for var in ("JAXKD_DATA_DIR", "JAXKD_DIGITS_DIR"):
      mp.delenv(var, raising=False)
    mp.setenv("JAXKD_OFFLINE", "1")
    data.prepare("digits", data_dir=data_dir)
    arrays = {split: data.load_arrays("digits", split, data_dir=data_dir)
              for split in ("train", "test")}
  return data_dir, arrays


def _expected_split_indices(labels):
  """`(train, test)` file positions: per class, in file order, positions 2, 5, 8, ... of that
  class's examples are test, the others train."""
  test_idx = np.sort(np.concatenate([np.nonzero(labels == c)[0][2::3] for c in range(10)]))
  return np.setdiff1d(np.arange(len(labels)), test_idx), test_idx


def _reference_image(pixels_8x8):
  """One image in MNIST geometry, pixel by pixel in exact fractions (half-pixel centres,
  edges clamped, rounded half up), padded to 28x28."""
  out = np.zeros((28, 28), np.int64)

  def taps(i):
    x = min(max((i + Fraction(1, 2)) * Fraction(8, 20) - Fraction(1, 2), 0), 7)
    left = int(x)  # x >= 0
    return left, min(left + 1, 7), x - left

  for i in range(20):
    r0, r1, fr = taps(i)
    for j in range(20):
      c0, c1, fc = taps(j)
      value = ((1 - fr) * ((1 - fc) * int(pixels_8x8[r0, c0]) + fc * int(pixels_8x8[r0, c1]))
               + fr * ((1 - fc) * int(pixels_8x8[r1, c0]) + fc * int(pixels_8x8[r1, c1])))
      value = value * 255 / 16
      out[4 + i, 4 + j] = int(value + Fraction(1, 2))  # floor(v + 1/2), v >= 0
  return out


@needs_sklearn
def test_info_and_registry():
  info = data.info("digits")
  assert info.class_names == tuple("0123456789") and info.image_shape == (28, 28, 1)
  assert dict(info.splits) == {"train": 1201, "test": 596}
  assert info.env_var == "JAXKD_DIGITS_DIR" and info.builder_name == "jaxkd_digits"
  assert "digits" in data.DATASETS


@needs_sklearn
def test_default_location_is_found_without_importing_sklearn():
  imported = "sklearn" in sys.modules
  folder = digits.sklearn_data_dir()
  assert (folder / "digits.csv.gz").samefile(REAL_FILE)
  assert imported or "sklearn" not in sys.modules


@needs_sklearn
def test_shapes_split_sizes_and_class_counts(built):
  data_dir, arrays = built
  for split, size in (("train", 1201), ("test", 596)):
    images, labels = arrays[split]
    assert images.shape == (size, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (size,) and labels.dtype == np.int32
  assert np.bincount(arrays["train"][1], minlength=10).tolist() == TRAIN_COUNTS
  assert np.bincount(arrays["test"][1], minlength=10).tolist() == TEST_COUNTS
  builder = data.builder("digits", data_dir=data_dir)
  assert builder.name == "jaxkd_digits"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == dict(
      data.info("digits").splits)
  assert builder.info.features["label"].names == [str(d) for d in range(10)]
  # prepare() recorded which raw file the dataset was made from.
  record = json.loads((pathlib.Path(builder.data_dir) / RAW_SOURCE_FILE).read_text())
  assert record["sha256"] == {"digits.csv.gz": sha256_of(REAL_FILE)}


@needs_sklearn
def test_stratified_split_rule_and_disjoint_splits(built, raw):
  _, arrays = built
  pixels, labels = raw
  train_idx, test_idx = _expected_split_indices(labels)
  np.testing.assert_array_equal(arrays["test"][1], labels[test_idx])
  np.testing.assert_array_equal(arrays["train"][1], labels[train_idx])
  # Every image lands in its split at its file-order position (checked against JAX's resize).
  resized = jax.image.resize(pixels.astype(np.float32) * 255 / 16, (len(labels), 20, 20),
                             "linear")
  reference = np.floor(np.asarray(resized) + 0.5)
  for split, idx in (("train", train_idx), ("test", test_idx)):
    inner = arrays[split][0][:, 4:24, 4:24, 0].astype(np.float32)
    assert np.abs(inner - reference[idx]).max() <= 1  # float32 vs exact ties
  # The raw file holds no duplicate images, so disjoint examples mean disjoint image sets.
  train_set = {image.tobytes() for image in arrays["train"][0]}
  test_set = {image.tobytes() for image in arrays["test"][0]}
  assert len(train_set) == 1201 and len(test_set) == 596 and not train_set & test_set


@needs_sklearn
def test_geometry_matches_a_reference_exactly(built, raw):
  _, arrays = built
  pixels, labels = raw
  train_idx, test_idx = _expected_split_indices(labels)
  for split, position in (("train", 0), ("test", 7)):
    index = (train_idx if split == "train" else test_idx)[position]
    got = arrays[split][0][position, :, :, 0]
    np.testing.assert_array_equal(got, _reference_image(pixels[index]))
  images = np.concatenate([arrays["train"][0], arrays["test"][0]])
  border = np.ones((28, 28), bool)
  border[4:24, 4:24] = False
  assert not images[:, border].any()
  assert images.max() == 255


@needs_sklearn
def test_mean_and_std_are_those_of_the_train_split(built):
  _, arrays = built
  train = arrays["train"][0].astype(np.float64) / 255
  info = data.info("digits")
  assert info.mean[0] == pytest.approx(train.mean(), abs=1e-4)
  assert info.std[0] == pytest.approx(train.std(), abs=1e-4)


@needs_sklearn
def test_load_task_with_a_small_target_task(built):
  data_dir, _ = built
  config = ml_collections.ConfigDict(dict(
      dataset="digits", data_dir=str(data_dir), seed=0, num_epochs=1,
      classes=(5, 6, 7, 8, 9), train_per_class=100, validation_size=50))
  check_config(config)
  task = load_task(config)
  assert task.num_classes == 5 and task.input_shape == (1, 28, 28, 1)
  assert len(task.train_labels) == 450 and len(task.val_labels) == 50
  assert np.bincount(task.test_labels).tolist() == TEST_COUNTS[5:]
  assert task.mean.tolist() == pytest.approx([0.1555]) and task.std.tolist() == pytest.approx(
      [0.2770])


def _write_rows(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wt") as f:
    f.write("".join(",".join(row) + "\n" for row in rows))


@needs_sklearn
@pytest.mark.parametrize("damage, message", [
    ("short_row", "line 6 has 64 columns, expected 65"),
    ("pixel_17", "pixel values must be in 0..16, but line 6 holds 17"),
    ("label_10", "labels must be in 0..9, but line 6 holds 10"),
    ("missing_row", "holds 1796 rows, expected 1797"),
])
def test_corrupt_raw_file_is_named(tmp_path, damage, message):
  with gzip.open(REAL_FILE, "rt") as f:
    rows = [line.split(",") for line in f.read().splitlines()]
  if damage == "short_row":
    rows[5] = rows[5][1:]
  elif damage == "pixel_17":
    rows[5][10] = "17"
  elif damage == "label_10":
    rows[5][64] = "10"
  else:
    del rows[5]
  bad = tmp_path / "raw" / "digits.csv.gz"
  _write_rows(bad, rows)
  with pytest.raises(data.CorruptDataError) as error:
    data.prepare("digits", data_dir=tmp_path / "tfds", raw_dir=tmp_path / "raw")
  assert str(bad) in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("via", ["env", "no_sklearn"])
def test_missing_file_says_how_to_get_it_and_never_downloads(tmp_path, monkeypatch, via):
  if via == "env":
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("JAXKD_DIGITS_DIR", str(tmp_path / "empty"))
  else:
    monkeypatch.setattr(digits, "sklearn_data_dir", lambda: None)

  def no_download(self, url_or_urls):
    raise AssertionError(f"tried to download {url_or_urls}")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", no_download)
  with pytest.raises(data.DataNotFoundError) as error:
    data.prepare("digits", data_dir=tmp_path / "tfds", allow_download=True)
  message = str(error.value)
  for part in ("never downloads", "digits.csv.gz", "JAXKD_DIGITS_DIR", "pip install scikit-learn",
               "pip install jaxkd[digits]"):
    assert part in message
  if via == "env":
    assert str(tmp_path / "empty") in message
  assert "allow downloads" not in message
