"""Generated stand-ins for raw dataset files, so tests never download."""
import gzip

import numpy as np

FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_fashion_mnist(folder, n_train=50, n_test=20, seed=0, learnable=False):
  """Writes the four IDX .gz files; returns {split: (images [N,28,28], labels)}.

  `learnable=True` draws each class's images around its own brightness pattern, so a
  model can learn the task in a few steps; otherwise pixels are uniform noise.
  """
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  patterns = rng.integers(0, 256, (10, 28, 28))
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    if learnable:
      noise = rng.integers(-40, 41, (n, 28, 28))
      images = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
    else:
      images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    write_idx(folder / FMNIST_FILES[split][0], images)
    write_idx(folder / FMNIST_FILES[split][1], labels)
    out[split] = (images, labels)
  return out


def _shared_cache():
  """The test run's compilation cache (tests/conftest.py), unless turned off."""
  import os
  cache = os.environ.get("JAXKD_TEST_COMPILATION_CACHE", "off")
  return None if cache == "off" else cache


def fashion_mnist_env(folder, **kwargs):
  """Generated Fashion-MNIST under `folder` and the environment a subprocess needs to use it
  (offline, its own TFDS folder, the test run's compilation cache). kwargs go to
  make_fashion_mnist."""
  import os
  make_fashion_mnist(folder / "raw", learnable=True, **kwargs)
  return dict(os.environ, JAXKD_FASHION_MNIST_DIR=str(folder / "raw"),
              JAXKD_DATA_DIR=str(folder / "tfds"), JAXKD_OFFLINE="1",
              JAXKD_COMPILATION_CACHE=_shared_cache() or str(folder / "jax_cache"),
              JAX_PLATFORMS="cpu",
              # every program cached: the runs of one test share theirs
              JAXKD_CACHE_MIN_COMPILE_SECS="0")


def fashion_mnist_in_process(folder, **kwargs):
  """A context manager: generated Fashion-MNIST under `folder` in this process's environment
  (offline, its own TFDS folder), restored on exit. kwargs go to make_fashion_mnist
  (learnable images)."""
  import contextlib
  import os

  @contextlib.contextmanager
  def scope():
    make_fashion_mnist(folder / "raw", learnable=True, **kwargs)
    env = {"JAXKD_FASHION_MNIST_DIR": str(folder / "raw"),
           "JAXKD_DATA_DIR": str(folder / "tfds"), "JAXKD_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
      yield folder
    finally:
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key)
        else:
          os.environ[key] = value

  return scope()
