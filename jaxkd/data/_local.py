"""Local-file TFDS builders: raw files from a folder, else an official download.

A `LocalFileBuilder` subclass names its raw files, the environment variable that
points at a folder holding them, default folders (e.g. where a Debian package
installs them) and the official URLs with their sha256 and size. The base class
finds the files, falls back to TFDS's download manager when allowed, and writes
an ArrayRecord dataset (no TensorFlow needed) that `tfds.data_source` reads with
random access.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
import pickle
import socket
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

DATA_DIR_ENV = "JAXKD_DATA_DIR"
OFFLINE_ENV = "JAXKD_OFFLINE"
_DEFAULT_DATA_DIR = "~/tensorflow_datasets"
RAW_SOURCE_FILE = "jaxkd_raw_source.json"  # the raw files a built dataset came from
CONNECT_TIMEOUT_S = 5.0


class DataNotFoundError(FileNotFoundError):
  """The raw files of a dataset are missing and downloading is off or failed."""


class CorruptDataError(ValueError):
  """A raw dataset file does not have the expected format or content."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and an input pipeline need to know about a dataset."""

  name: str
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C)
  mean: tuple[float, ...]  # per channel, on [0, 1] pixel values
  std: tuple[float, ...]
  splits: Mapping[str, int]  # official split sizes
  env_var: str  # names a folder holding the raw files
  builder_name: str  # the TFDS registered name (distinct from TFDS's own)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """An official download location with its expected sha256 and size."""

  url: str
  sha256: str
  size: int


def default_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """`data_dir`, else $JAXKD_DATA_DIR, else ~/tensorflow_datasets."""
  chosen = data_dir or os.environ.get(DATA_DIR_ENV) or _DEFAULT_DATA_DIR
  path = pathlib.Path(chosen).expanduser()
  if path.exists() and not path.is_dir():
    where = 'data_dir' if data_dir else (f'${DATA_DIR_ENV}' if os.environ.get(DATA_DIR_ENV)
                                         else 'the default data folder')
    raise ValueError(f'{where}={str(path)!r} is a file, not a folder; point it at a folder '
                     '(created if missing) where prepared datasets are kept.')
  return path


def downloads_allowed(allow_download: bool | None = None) -> bool:
  """`allow_download` if given, else False when $JAXKD_OFFLINE is set to a true value."""
  if allow_download is not None:
    return allow_download
  return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def probe_host(host: str, port: int = 443) -> None:
  """Opens and closes one TCP connection to `host`; OSError within `CONNECT_TIMEOUT_S`."""
  socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()


def sha256_of(path: pathlib.Path) -> str:
  """Hex sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles only plain containers and NumPy arrays (no arbitrary code)."""

  _ALLOWED = {
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      ("_codecs", "encode"),
  }

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
    if module.startswith("numpy.core"):  # Pickled by old NumPy; same objects.
      module = "numpy._core" + module[len("numpy.core"):]
    return super().find_class(module, name)


def load_array_pickle(data: bytes, what: str) -> dict[str, Any]:
  """Loads a pickled dict of arrays/lists (the CIFAR python format); str keys."""
  try:
    obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
  except Exception as e:  # Any failure here means the file is not what we expect.
    raise CorruptDataError(f"{what} is not a valid CIFAR python pickle: {e}") from e
  if not isinstance(obj, dict):
    raise CorruptDataError(f"{what} should hold a dict, found {type(obj).__name__}.")
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class LocalFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for image-classification datasets built from local raw files.

  Subclasses set the class attributes below and implement `_read_split`. The
  raw files are looked for in `raw_dir` if given, else in the folder named by
  `INFO.env_var` if set, else in `default_dirs()` (`DEFAULT_DIRS` unless overridden)
  and `<data_dir>/downloads/manual`; if no folder holds all of them and downloads are
  allowed, they are downloaded from `URLS` by TFDS's download manager and their sha256
  and size verified. A dataset without `URLS` is never downloaded.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  INFO: ClassVar[DatasetInfo]
  RAW_FILES: ClassVar[tuple[str, ...]]
  DEFAULT_DIRS: ClassVar[tuple[str, ...]] = ()
  URLS: ClassVar[Mapping[str, RemoteFile]] = {}
  INSTALL_HINT: ClassVar[str] = ""  # e.g. a package that installs the files
  HOMEPAGE: ClassVar[str] = ""
  CITATION: ClassVar[str] = ""

  def __init__(
      self,
      *,
      raw_dir: str | os.PathLike | None = None,
      allow_download: bool | None = None,
      **kwargs: Any,
  ):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self._raw_dir = raw_dir
    self._allow_download = allow_download

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"{self.INFO.name} from its raw files, built without TensorFlow.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=self.INFO.image_shape, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(self.INFO.class_names)),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE or None,
        citation=self.CITATION or None,
        disable_shuffling=True,  # Keep the official order: train[:k] is stable.
    )

  def candidate_dirs(self) -> list[pathlib.Path]:
    """Folders searched for the raw files, in order."""
    explicit = self._raw_dir or os.environ.get(self.INFO.env_var)
    if explicit:  # An explicit folder replaces the defaults, so mistakes surface.
      return [pathlib.Path(explicit).expanduser()]
    # TFDS's convention for files fetched by hand: <data_dir>/downloads/manual.
    manual = pathlib.Path(self.data_dir_root) / "downloads" / "manual"
    return [pathlib.Path(d) for d in self.default_dirs()] + [manual]

  def default_dirs(self) -> Sequence[str | os.PathLike]:
    """Folders searched when the user names none; override to compute them when asked."""
    return self.DEFAULT_DIRS

  def find_raw_files(self) -> dict[str, pathlib.Path] | None:
    """Paths of all raw files from the first folder that holds them, else None."""
    for folder in self.candidate_dirs():
      paths = {name: folder / name for name in self.RAW_FILES}
      if all(p.is_file() for p in paths.values()):
        return paths
    return None

  def _not_found_error(self, reason: str) -> DataNotFoundError:
    lines = [f"Raw files for {self.INFO.name!r} not found ({reason})."]
    for folder in self.candidate_dirs():
      missing = [n for n in self.RAW_FILES if not (folder / n).is_file()]
      lines.append(f"  looked in {folder}: missing {', '.join(missing)}")
    lines.append(f"Fix: put {', '.join(self.RAW_FILES)} in a folder and set "
                 f"{self.INFO.env_var}=<folder> (or pass raw_dir=<folder>).")
    if self.INSTALL_HINT:
      lines.append(f"  Or: {self.INSTALL_HINT}.")
    if reason == "downloads are disabled":
      lines.append(f"  Or: allow downloads (allow_download=True, unset {OFFLINE_ENV}).")
    return DataNotFoundError("\n".join(lines))

  def _download(self, dl_manager: tfds.download.DownloadManager) -> dict[str, pathlib.Path]:
    """Downloads the raw files from their official URLs and verifies them; an unreachable
    host fails within seconds (TFDS would retry for minutes)."""
    for host in sorted({urllib.parse.urlparse(f.url).hostname for f in self.URLS.values()}):
      try:
        probe_host(host)
      except OSError as e:
        raise self._not_found_error(f"download failed: cannot reach {host} ({e})") from None
    try:
      paths = dl_manager.download({name: self.URLS[name].url for name in self.RAW_FILES})
    except Exception as e:  # Network errors come in many types; report one.
      raise self._not_found_error(f"download failed: {e}") from e
    result = {}
    for name, path in paths.items():
      path, expected = pathlib.Path(path), self.URLS[name]
      size = path.stat().st_size
      if size != expected.size or sha256_of(path) != expected.sha256:
        raise CorruptDataError(
            f"Downloaded {name} from {expected.url} does not match its checksum "
            f"(size {size}, expected {expected.size}). Delete {path} and retry.")
      result[name] = path
    return result

  def explicit_raw_dir(self) -> pathlib.Path | None:
    """The raw folder the user named (`raw_dir` or the environment variable), if any."""
    explicit = self._raw_dir or os.environ.get(self.INFO.env_var)
    return pathlib.Path(explicit).expanduser().resolve() if explicit else None

  def record_raw_source(self) -> None:
    """After a build: which raw files it was made from (folder and sha256), in the dataset's
    folder; later, `check_raw_source` reports a user-named folder that holds other files."""
    record = pathlib.Path(self.data_dir) / RAW_SOURCE_FILE
    files = self.find_raw_files()
    if record.exists() or files is None:
      return
    folder = next(iter(files.values())).parent.resolve()
    record.write_text(json.dumps({"folder": str(folder), "sha256": {
        name: sha256_of(path) for name, path in files.items()}}, indent=2))

  def check_raw_source(self) -> None:
    """Raises ValueError when the user names a raw folder (`raw_dir`, the environment
    variable) whose files differ from those the built dataset was made from: a changed
    `JAXKD_FASHION_MNIST_DIR` would otherwise be ignored silently."""
    explicit, record = self.explicit_raw_dir(), pathlib.Path(self.data_dir) / RAW_SOURCE_FILE
    if explicit is None or not record.exists():
      return
    built = json.loads(record.read_text())
    if str(explicit) == built["folder"]:
      return
    paths = {name: explicit / name for name in self.RAW_FILES}
    if all(p.is_file() for p in paths.values()) and all(
        sha256_of(p) == built["sha256"].get(name) for name, p in paths.items()):
      return  # the same files in another folder
    raise ValueError(
        f"{self.INFO.name} in {self.data_dir} was built from {built['folder']}, but "
        f"{self.INFO.env_var if not self._raw_dir else 'raw_dir'}={explicit} names other raw "
        f"files. Remove {self.data_dir} to rebuild from {explicit}, or unset it.")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    files = self.find_raw_files()
    if files is None:
      if not self.URLS:
        raise self._not_found_error("jaxkd never downloads them")
      if not downloads_allowed(self._allow_download):
        raise self._not_found_error("downloads are disabled")
      files = self._download(dl_manager)
    return {split: self._generate_examples(files, split) for split in self.INFO.splits}

  def _generate_examples(self, files: Mapping[str, pathlib.Path], split: str) -> Iterator:
    images, labels = self._read_split(files, split)
    h, w, c = self.INFO.image_shape
    if images.shape[1:] != (h, w, c) or images.dtype != np.uint8:
      raise CorruptDataError(f"{self.INFO.name} {split}: images are {images.dtype}"
                             f"{list(images.shape)}, expected uint8[N, {h}, {w}, {c}].")
    if len(labels) != len(images):
      raise CorruptDataError(f"{self.INFO.name} {split}: {len(images)} images but "
                             f"{len(labels)} labels.")
    if len(labels) and (labels.min() < 0 or labels.max() >= self.INFO.num_classes):
      raise CorruptDataError(f"{self.INFO.name} {split}: labels outside "
                             f"[0, {self.INFO.num_classes}).")
    for i, (image, label) in enumerate(zip(images, labels.tolist())):
      yield i, {"image": image, "label": label}

  def _read_split(
      self, files: Mapping[str, pathlib.Path], split: str
  ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 [N, H, W, C] images, int [N] labels) of `split`."""
    raise NotImplementedError


def check_class_names(found: Sequence[Any], expected: Sequence[str], what: str) -> None:
  """Raises CorruptDataError unless the raw file's class names are the expected ones."""
  names = [n.decode() if isinstance(n, bytes) else str(n) for n in found]
  if names != list(expected):
    raise CorruptDataError(f"{what} lists classes {names[:5]}..., expected "
                           f"{list(expected)[:5]}... ({len(expected)} names).")
