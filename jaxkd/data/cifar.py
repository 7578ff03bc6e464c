"""CIFAR-10 and CIFAR-100 from their official python-version tar.gz archives."""

from __future__ import annotations

import pathlib
import tarfile
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from jaxkd.data._local import (CorruptDataError, DatasetInfo, LocalFileBuilder, RemoteFile,
                               check_class_names, load_array_pickle)

_URL = "https://www.cs.toronto.edu/~kriz/"
_CITATION = "Alex Krizhevsky. Learning Multiple Layers of Features from Tiny Images. 2009."

CIFAR100_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can",
    "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo",
    "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain",
    "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


def read_tar_members(path: pathlib.Path, names: set[str]) -> dict[str, bytes]:
  """Reads the named members of a tar.gz in one sequential pass."""
  found = {}
  try:
    with tarfile.open(path, "r:gz") as tar:
      for member in tar:
        if member.isfile() and member.name in names:
          found[member.name] = tar.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError) as e:
    raise CorruptDataError(f"Cannot read {path}: {e}. Replace the archive.") from e
  missing = sorted(names - found.keys())
  if missing:
    raise CorruptDataError(f"{path} lacks {', '.join(missing)}: not the official "
                           "python-version archive. Replace it.")
  return found


def _cifar_info(name: str, class_names: tuple[str, ...], mean: tuple[float, ...],
                std: tuple[float, ...]) -> DatasetInfo:
  """A CIFAR dataset's facts: 32x32 RGB images, 50,000 for training and 10,000 for test."""
  return DatasetInfo(name=name, class_names=class_names, image_shape=(32, 32, 3), mean=mean,
                     std=std, splits={"train": 50000, "test": 10000},
                     env_var=f"JAXKD_{name.upper()}_DIR", builder_name=f"jaxkd_{name}")


def _official_archive(name: str, sha256: str, size: int):
  """`(RAW_FILES, URLS)` of a builder reading the one archive `name` from the official site."""
  return (name,), {name: RemoteFile(_URL + name, sha256, size)}


class _CifarBuilder(LocalFileBuilder, skip_registration=True):
  """Reads the pickled batches of a CIFAR python-version archive."""

  HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
  CITATION = _CITATION

  FOLDER: ClassVar[str]  # Top folder inside the archive.
  SPLIT_MEMBERS: ClassVar[Mapping[str, tuple[str, ...]]]
  META_MEMBER: ClassVar[str]
  NAMES_KEY: ClassVar[str]
  LABELS_KEY: ClassVar[str]

  def _archive(self, files: Mapping[str, pathlib.Path]) -> dict[str, dict[str, Any]]:
    """Unpickled batches by member name, read once and shared by both splits."""
    if getattr(self, "_batches", None) is None:
      wanted = {m for ms in self.SPLIT_MEMBERS.values() for m in ms} | {self.META_MEMBER}
      archive = files[self.RAW_FILES[0]]
      raw = read_tar_members(archive, {f"{self.FOLDER}/{m}" for m in wanted})
      self._batches = {m: load_array_pickle(raw[f"{self.FOLDER}/{m}"], f"{archive}:{m}")
                       for m in wanted}
      meta = self._batches[self.META_MEMBER]
      if self.NAMES_KEY not in meta:
        raise CorruptDataError(f"{archive}:{self.META_MEMBER} has no {self.NAMES_KEY!r}.")
      check_class_names(meta[self.NAMES_KEY], self.INFO.class_names,
                        f"{archive}:{self.META_MEMBER}")
    return self._batches

  def _read_split(self, files: Mapping[str, pathlib.Path], split: str):
    batches = self._archive(files)
    images, labels = [], []
    for member in self.SPLIT_MEMBERS[split]:
      batch = batches[member]
      if "data" not in batch or self.LABELS_KEY not in batch:
        raise CorruptDataError(f"CIFAR batch {member} lacks 'data' or {self.LABELS_KEY!r}.")
      data = np.asarray(batch["data"])
      if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise CorruptDataError(f"CIFAR batch {member}: data is {data.dtype}"
                               f"{list(data.shape)}, expected uint8[N, 3072].")
      # Rows are 1024 red, 1024 green, 1024 blue values: CHW -> HWC.
      images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
      labels.append(np.asarray(batch[self.LABELS_KEY], np.int64))
    if split == list(self.SPLIT_MEMBERS)[-1]:
      self._batches = None  # Both splits done: free the memory.
    return np.concatenate(images), np.concatenate(labels)


class JaxkdCifar10(_CifarBuilder):
  """CIFAR-10 (Krizhevsky, 2009), registered in TFDS as `jaxkd_cifar10`."""

  INFO = _cifar_info(
      "cifar10", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck"),
      mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
  RAW_FILES, URLS = _official_archive(
      "cifar-10-python.tar.gz",
      "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071)
  FOLDER = "cifar-10-batches-py"
  SPLIT_MEMBERS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)),
                   "test": ("test_batch",)}
  META_MEMBER = "batches.meta"
  NAMES_KEY = "label_names"
  LABELS_KEY = "labels"


class JaxkdCifar100(_CifarBuilder):
  """CIFAR-100 fine labels (Krizhevsky, 2009), registered in TFDS as `jaxkd_cifar100`."""

  INFO = _cifar_info("cifar100", CIFAR100_CLASS_NAMES, mean=(0.5071, 0.4865, 0.4409),
                     std=(0.2673, 0.2564, 0.2762))
  RAW_FILES, URLS = _official_archive(
      "cifar-100-python.tar.gz",
      "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7", 169001437)
  FOLDER = "cifar-100-python"
  SPLIT_MEMBERS = {"train": ("train",), "test": ("test",)}
  META_MEMBER = "meta"
  NAMES_KEY = "fine_label_names"
  LABELS_KEY = "fine_labels"
