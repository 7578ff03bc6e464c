"""Tests of jaxkd.data: builders from generated raw files, and the in-memory pipeline."""

import gzip
import io
import os
import pickle
import shutil
import tarfile

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxkd import data
from jaxkd.data import pipeline
from jaxkd.data import _local
from jaxkd.data._local import sha256_of
from jaxkd.data.cifar import CIFAR100_CLASS_NAMES
from jaxkd.data.fashion_mnist import JaxkdFashionMnist, read_idx
from fakedata import FMNIST_FILES, make_fashion_mnist, write_idx as _write_idx

REAL_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
  """Tests see none of the user's data settings, and never download."""
  for var in ("JAXKD_DATA_DIR", "JAXKD_FASHION_MNIST_DIR", "JAXKD_CIFAR10_DIR",
              "JAXKD_CIFAR100_DIR", "JAXKD_DIGITS_DIR"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("JAXKD_OFFLINE", "1")


def _add_pickle(tar, name, obj):
  blob = pickle.dumps(obj, protocol=2)
  member = tarfile.TarInfo(name)
  member.size = len(blob)
  tar.addfile(member, io.BytesIO(blob))


def make_cifar(folder, *, hundred, seed=0):
  """Writes an official-format python-version archive; returns {split: (images HWC, labels)}."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  num_classes = 100 if hundred else 10
  sizes = {"train": [12] if hundred else [4, 3, 5, 4, 4], "test": [7]}
  top = "cifar-100-python" if hundred else "cifar-10-batches-py"
  members = ({"train": ["train"], "test": ["test"]} if hundred else
             {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]})
  out = {}
  archive = folder / ("cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    for split in ("train", "test"):
      images, labels = [], []
      for member, n in zip(members[split], sizes[split]):
        rows = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, num_classes, n).tolist()
        batch = {b"batch_label": b"generated", b"data": rows, b"filenames": [b"x.png"] * n}
        if hundred:
          batch[b"fine_labels"] = batch_labels
          batch[b"coarse_labels"] = [0] * n
        else:
          batch[b"labels"] = batch_labels
        _add_pickle(tar, f"{top}/{member}", batch)
        images.append(rows.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
        labels += batch_labels
      out[split] = (np.concatenate(images), np.asarray(labels))
    if hundred:
      meta = {b"fine_label_names": [n.encode() for n in CIFAR100_CLASS_NAMES],
              b"coarse_label_names": [b"c%d" % i for i in range(20)]}
      _add_pickle(tar, f"{top}/meta", meta)
    else:
      _add_pickle(tar, f"{top}/batches.meta",
                  {b"label_names": [n.encode() for n in CIFAR10_NAMES],
                   b"num_cases_per_batch": 10000, b"num_vis": 3072})
  return out


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
  """A tiny Fashion-MNIST built once: (data_dir, generated arrays)."""
  root = tmp_path_factory.mktemp("fmnist")
  generated = make_fashion_mnist(root / "raw")
  data.prepare("fashion_mnist", data_dir=root / "tfds", raw_dir=root / "raw")
  return root / "tfds", generated


# ---------------------------------------------------------------- builders


def test_fashion_mnist_round_trip(fmnist):
  data_dir, generated = fmnist
  for split in ("train", "test"):
    images, labels = data.load_arrays("fashion_mnist", split, data_dir=data_dir)
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, generated[split][0][..., None])
    np.testing.assert_array_equal(labels, generated[split][1])
  builder = data.builder("fashion_mnist", data_dir=data_dir)
  assert builder.name == "jaxkd_fashion_mnist"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 50, "test": 20}
  assert builder.info.features["label"].names == list(data.info("fashion_mnist").class_names)


def test_source_split_slicing(fmnist):
  data_dir, generated = fmnist
  head = data.source("fashion_mnist", "train[:30]", data_dir=data_dir)
  tail = data.source("fashion_mnist", "train[30:]", data_dir=data_dir)
  assert (len(head), len(tail)) == (30, 20)
  np.testing.assert_array_equal(tail[0]["image"][..., 0], generated["train"][0][30])
  assert tail[19]["label"] == generated["train"][1][49]


def test_env_vars_and_idempotent_prepare(tmp_path, monkeypatch):
  generated = make_fashion_mnist(tmp_path / "raw", n_train=12, n_test=3)
  monkeypatch.setenv("JAXKD_FASHION_MNIST_DIR", str(tmp_path / "raw"))
  monkeypatch.setenv("JAXKD_DATA_DIR", str(tmp_path / "tfds"))
  data.prepare("fashion_mnist")
  assert (tmp_path / "tfds" / "jaxkd_fashion_mnist" / "1.0.0").is_dir()
  for f in (tmp_path / "raw").iterdir():  # Built data no longer needs the raw files.
    f.unlink()
  data.prepare("fashion_mnist")
  images, labels = data.load_arrays("fashion_mnist", "test")
  np.testing.assert_array_equal(labels, generated["test"][1])


def test_default_folder_used_without_env(tmp_path, monkeypatch):
  generated = make_fashion_mnist(tmp_path / "debian", n_train=10, n_test=2)
  monkeypatch.setattr(JaxkdFashionMnist, "DEFAULT_DIRS", (str(tmp_path / "debian"),))
  _, labels = data.load_arrays("fashion_mnist", "train", data_dir=tmp_path / "tfds")
  np.testing.assert_array_equal(labels, generated["train"][1])


@pytest.mark.parametrize("via_env", [True, False])
def test_missing_files_offline_error(tmp_path, monkeypatch, via_env):
  empty = tmp_path / "empty"
  empty.mkdir()
  if via_env:  # JAXKD_OFFLINE=1 from the autouse fixture.
    monkeypatch.setenv("JAXKD_FASHION_MNIST_DIR", str(empty))
    kwargs = {}
  else:
    monkeypatch.delenv("JAXKD_OFFLINE")
    kwargs = {"raw_dir": empty, "allow_download": False}
  with pytest.raises(data.DataNotFoundError) as err:
    data.prepare("fashion_mnist", data_dir=tmp_path / "tfds", **kwargs)
  message = str(err.value)
  for part in (str(empty), "dataset-fashion-mnist", "JAXKD_FASHION_MNIST_DIR",
               "train-images-idx3-ubyte.gz"):
    assert part in message


def test_download_fallback_is_verified(tmp_path, monkeypatch):
  """The online path, with TFDS's download manager faked: no network is touched."""
  served = tmp_path / "served"
  generated = make_fashion_mnist(served, n_train=10, n_test=4)
  monkeypatch.setattr(JaxkdFashionMnist, "DEFAULT_DIRS", ())
  urls = {name: data.RemoteFile(f"https://example.invalid/{name}",
                                sha256_of(served / name), (served / name).stat().st_size)
          for name in JaxkdFashionMnist.RAW_FILES}
  monkeypatch.setattr(JaxkdFashionMnist, "URLS", urls)
  requested = []

  def fake_download(self, url_or_urls):
    requested.extend(url_or_urls.values())
    return {name: served / url.rsplit("/", 1)[1] for name, url in url_or_urls.items()}

  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  monkeypatch.setattr(_local, "probe_host", lambda host: None)  # "online"
  with pytest.raises(data.DataNotFoundError, match="downloads are disabled"):
    data.prepare("fashion_mnist", data_dir=tmp_path / "a")
  _, labels = data.load_arrays("fashion_mnist", "test", data_dir=tmp_path / "a",
                               allow_download=True)
  np.testing.assert_array_equal(labels, generated["test"][1])
  assert sorted(requested) == sorted(u.url for u in urls.values())

  bad = dict(urls)
  name = JaxkdFashionMnist.RAW_FILES[0]
  bad[name] = data.RemoteFile(urls[name].url, "0" * 64, urls[name].size)
  monkeypatch.setattr(JaxkdFashionMnist, "URLS", bad)
  with pytest.raises(data.CorruptDataError, match="does not match its checksum"):
    data.prepare("fashion_mnist", data_dir=tmp_path / "b", allow_download=True)

  def failing_download(self, url_or_urls):
    raise ConnectionError("network unreachable")

  monkeypatch.setattr(tfds.download.DownloadManager, "download", failing_download)
  with pytest.raises(data.DataNotFoundError, match="download failed: network unreachable"):
    data.prepare("fashion_mnist", data_dir=tmp_path / "c", allow_download=True)

  def offline(host):
    raise OSError("Network is unreachable")

  monkeypatch.setattr(_local, "probe_host", offline)  # offline: refused before any retry
  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  requested.clear()
  with pytest.raises(data.DataNotFoundError, match="cannot reach example.invalid"):
    data.prepare("fashion_mnist", data_dir=tmp_path / "d", allow_download=True)
  assert requested == []


def test_changed_raw_folder_is_reported(tmp_path, monkeypatch):
  """A dataset built from one raw folder, then asked for with another one named."""
  monkeypatch.setattr(JaxkdFashionMnist, "DEFAULT_DIRS", ())
  make_fashion_mnist(tmp_path / "one", n_train=10, n_test=4)
  shutil.copytree(tmp_path / "one", tmp_path / "copy")  # the same files elsewhere
  make_fashion_mnist(tmp_path / "other", n_train=12, n_test=4)
  monkeypatch.setenv("JAXKD_FASHION_MNIST_DIR", str(tmp_path / "one"))
  data.prepare("fashion_mnist", data_dir=tmp_path / "tfds")
  monkeypatch.setenv("JAXKD_FASHION_MNIST_DIR", str(tmp_path / "copy"))
  data.prepare("fashion_mnist", data_dir=tmp_path / "tfds")  # same files: accepted
  monkeypatch.setenv("JAXKD_FASHION_MNIST_DIR", str(tmp_path / "other"))
  with pytest.raises(ValueError, match="was built from .*one.*JAXKD_FASHION_MNIST_DIR"):
    data.load_arrays("fashion_mnist", "test", data_dir=tmp_path / "tfds")


def test_corrupt_idx_errors(tmp_path):
  make_fashion_mnist(tmp_path, n_train=5, n_test=2)
  bad_magic = tmp_path / "bad_magic.gz"
  with gzip.open(bad_magic, "wb") as f:
    f.write(bytes([0, 0, 8, 2]) + np.asarray([5, 28, 28], ">u4").tobytes())
  with pytest.raises(data.CorruptDataError, match="magic number"):
    read_idx(bad_magic, ndim=3)
  truncated = tmp_path / "train-images-idx3-ubyte.gz"
  with gzip.open(truncated, "wb") as f:
    f.write(bytes([0, 0, 8, 3]) + np.asarray([5, 28, 28], ">u4").tobytes() + bytes(100))
  with pytest.raises(data.CorruptDataError, match="truncated"):
    data.prepare("fashion_mnist", data_dir=tmp_path / "tfds", raw_dir=tmp_path)
  truncated.write_bytes(b"not gzip at all")
  with pytest.raises(data.CorruptDataError, match="Cannot read"):
    read_idx(truncated, ndim=3)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trip(tmp_path, monkeypatch, name):
  generated = make_cifar(tmp_path / "raw", hundred=name == "cifar100")
  monkeypatch.setenv(data.info(name).env_var, str(tmp_path / "raw"))
  for split in ("train", "test"):
    images, labels = data.load_arrays(name, split, data_dir=tmp_path / "tfds")
    assert images.shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(images, generated[split][0])
    np.testing.assert_array_equal(labels, generated[split][1])
  builder = data.builder(name, data_dir=tmp_path / "tfds")
  assert builder.name == f"jaxkd_{name}"
  assert builder.info.splits["train"].num_examples == (20 if name == "cifar10" else 12)
  names = builder.info.features["label"].names
  assert names == (CIFAR10_NAMES if name == "cifar10" else list(CIFAR100_CLASS_NAMES))


def test_cifar_refuses_code_in_pickles(tmp_path):
  top = tmp_path / "raw"
  top.mkdir()
  with tarfile.open(top / "cifar-10-python.tar.gz", "w:gz") as tar:
    _add_pickle(tar, "cifar-10-batches-py/batches.meta", {b"x": os.system})
    for m in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
      _add_pickle(tar, f"cifar-10-batches-py/{m}", {})
  with pytest.raises(data.CorruptDataError, match="refusing to load global"):
    data.prepare("cifar10", data_dir=tmp_path / "tfds", raw_dir=top)


def test_info_registry():
  assert set(data.DATASETS) == {"fashion_mnist", "cifar10", "cifar100", "digits"}
  fm, c10, c100 = data.info("fashion_mnist"), data.info("cifar10"), data.info("cifar100")
  assert (fm.num_classes, c10.num_classes, c100.num_classes) == (10, 10, 100)
  assert len(set(c100.class_names)) == 100 and fm.image_shape == (28, 28, 1)
  assert c10.mean == (0.4914, 0.4822, 0.4465) and fm.std == (0.3530,)
  assert dict(c100.splits) == {"train": 50000, "test": 10000}
  with pytest.raises(KeyError, match="cifar10"):
    data.info("mnist")


def test_subset_classes():
  labels = np.arange(100) % 10
  images = np.arange(100)[:, None, None, None].astype(np.uint8)
  x, y = data.subset_classes(images, labels, [7, 2])
  assert len(y) == 20 and set(y.tolist()) == {0, 1}
  np.testing.assert_array_equal(y, np.where(labels[x[:, 0, 0, 0]] == 7, 0, 1))
  x1, y1 = data.subset_classes(images, labels, range(5, 10), per_class=3, seed=1)
  x2, _ = data.subset_classes(images, labels, range(5, 10), per_class=3, seed=1)
  x3, _ = data.subset_classes(images, labels, range(5, 10), per_class=3, seed=2)
  np.testing.assert_array_equal(x1, x2)
  assert not np.array_equal(x1, x3)
  assert np.bincount(y1).tolist() == [3] * 5 and y1.dtype == np.int32
  np.testing.assert_array_equal(labels[x1[:, 0, 0, 0]] - 5, y1)
  with pytest.raises(ValueError, match="fewer than"):
    data.subset_classes(images, labels, [0], per_class=11)


@pytest.mark.skipif(not os.path.isdir(REAL_FASHION_MNIST), reason="no Debian fashion-mnist")
def test_real_fashion_mnist_files():
  labels = {s: read_idx(f"{REAL_FASHION_MNIST}/{f[1]}", ndim=1) for s, f in FMNIST_FILES.items()}
  assert (len(labels["train"]), len(labels["test"])) == (60000, 10000)
  assert np.bincount(labels["train"]).tolist() == [6000] * 10
  assert np.bincount(labels["test"]).tolist() == [1000] * 10
  test_images = read_idx(f"{REAL_FASHION_MNIST}/{FMNIST_FILES['test'][0]}", ndim=3)
  assert test_images.shape == (10000, 28, 28)


def _ids(batch, mean=0.0, std=1.0):
  pixel = batch["image"][:, 0, 0, 0] * std + mean
  return np.rint(np.asarray(pixel) * 255).astype(int).tolist()


# ---------------------------------------------------------------- in-memory


def _in_memory(n=50, **kwargs):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
  kwargs = {"batch_size": 8, "mean": 0.0, "std": 1.0, "seed": 5, "shard_index": 0,
            "shard_count": 1, "num_classes": 7, **kwargs}
  return pipeline.InMemoryDataset(images, np.arange(n) % 7, **kwargs)


def test_in_memory_epochs_determinism_and_compile_once():
  ds = _in_memory()
  assert ds.steps_per_epoch == 6 == len(ds)
  epoch0 = [_ids(b) for b in ds.epoch(0)]
  flat = sum(epoch0, [])
  assert len(flat) == 48 and len(set(flat)) == 48  # Drop remainder: at most once.
  assert epoch0 == [_ids(b) for b in _in_memory().epoch(0)]
  epoch1 = [_ids(b) for b in ds.epoch(1)]
  assert epoch1 != epoch0
  assert epoch0 != [_ids(b) for b in _in_memory(seed=6).epoch(0)]
  assert sorted(sum([_ids(b) for b in _in_memory(n=48).epoch(0)], [])) == list(range(48))
  assert ds._batch_fn._cache_size() == 1 and ds._order_fn._cache_size() == 1
  # Resume mid-epoch: same batches as the uninterrupted epoch.
  assert [_ids(b) for b in _in_memory().epoch(1, start_step=4)] == epoch1[4:]


def test_in_memory_normalization_and_labels():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (20, 3, 3, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 20)
  mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
  ds = pipeline.InMemoryDataset(images, labels, batch_size=10, mean=mean, std=std,
                                shuffle=False, shard_index=0, shard_count=1, num_classes=10)
  batch = ds.batch(0, 1)
  np.testing.assert_allclose(batch["image"], (images[10:] / 255.0 - mean) / std,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["label"], labels[10:])
  assert batch["label"].dtype == np.int32
  with pytest.raises(ValueError, match=r"mean has 2 values .* per channel of the images \(3\)"):
    pipeline.InMemoryDataset(images, labels, batch_size=10, mean=(0.5, 0.5), std=1.0,
                             shard_index=0, shard_count=1, num_classes=10)


def test_in_memory_shards_disjoint_and_cover():
  shards = [sum([_ids(b) for b in _in_memory(n=48, batch_size=4, shard_index=i,
                                             shard_count=2).epoch(2)], [])
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 24
  assert sorted(shards[0] + shards[1]) == list(range(48))


def test_in_memory_batch_sharding_over_mesh():
  mesh = jax.make_mesh((8,), ("data",))
  ds = _in_memory(n=64, batch_size=16, batch_sharding=NamedSharding(mesh, P("data")))
  batch = ds.batch(0, 0)
  assert batch["image"].sharding.spec == P("data")
  assert len(batch["image"].addressable_shards) == 8
  assert _ids(batch) == _ids(_in_memory(n=64, batch_size=16).batch(0, 0))
