"""Test set-up: eight fake CPU devices, so parallel modes are exercised without accelerators,
and one compilation cache for the whole run (every pytest-xdist worker and every experiment
subprocess), so a program several tests build is compiled once."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling is most of this suite's time. XLA's CPU backend at optimisation level 0, with
# its older loop emitters instead of the fusion emitters and without LLVM's expensive passes,
# compiles the same programs 2.4x faster (tests' typical steps: 7.9 s -> 3.3 s, AMD EPYC);
# numerics stay within every test's tolerance. Subprocesses started by the tests inherit
# it. Speed is measured in benchmarks/, with XLA's defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_cpu_use_fusion_emitters=false "
                      "--xla_llvm_disable_expensive_passes=true")
# The controller process sets it before the workers start, so they all share it.
_OWN_CACHE = "JAXKD_TEST_COMPILATION_CACHE" not in os.environ  # "off": no cache
if _OWN_CACHE:  # removed at exit by the process that made it, after its workers
  os.environ["JAXKD_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxkd-test-cache-")
  atexit.register(shutil.rmtree, os.environ["JAXKD_TEST_COMPILATION_CACHE"],
                  ignore_errors=True)
CACHE = os.environ["JAXKD_TEST_COMPILATION_CACHE"]

import jax  # noqa: E402
import pytest  # noqa: E402

# Must happen before JAX's backend starts; every test module sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
if CACHE != "off":
  jax.config.update("jax_compilation_cache_dir", CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_collection_modifyitems(session, config, items):
  """Tests marked `slow` (subprocesses, 10 s or more) run first. pytest-xdist hands each
  worker a chunk of consecutive tests and then the rest one by one, so the long ones no
  longer end the run on one worker while the other idles (2 cores, AMD EPYC, suite alone:
  384 s -> 311 s). The order is otherwise unchanged, so a module's tests still share its
  fixtures and compiled steps on one worker."""
  del session, config
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)


# ------------------------------------------------------------ set-ups shared by test modules

FMNIST_SHAPE = (1, 28, 28, 1)  # one Fashion-MNIST image, batch dimension included


@pytest.fixture(scope='session')
def make_batches():
  """`make_batches(count, n=16, seed=0)`: `count` batches of `n` normal 28x28x1 images and
  labels in 0..9, the same for the same arguments."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def make(count: int, n: int = 16, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{'image': rng.normal(size=(n, 28, 28, 1)).astype(np.float32),
             'label': rng.integers(0, 10, n).astype(np.int32)} for _ in range(count)]
  return make


@pytest.fixture(scope='session')
def lenet_pair():
  """`(teacher, student)`: LeNet-5 and LeNet-5-Half for 10 classes."""
  from jaxkd import models  # pylint: disable=g-import-not-at-top
  return models.build('lenet5', num_classes=10), models.build('lenet5_half', num_classes=10)


@pytest.fixture(scope='session')
def teacher_vars(lenet_pair):
  """The LeNet-5 teacher's variables (key 1). Shared: no step donates its teachers."""
  from jaxkd.state import init_variables  # pylint: disable=g-import-not-at-top
  return init_variables(lenet_pair[0], key=jax.random.key(1), input_shape=FMNIST_SHAPE)


@pytest.fixture(scope='session')
def straight_and_resumed():
  """`straight_and_resumed(state, step, batches, directory) -> (straight, resumed)`: the state
  after every batch, and after half of them, a checkpoint save and restore (a fresh
  Checkpointer), and the rest. `step(state, batch) -> (state, metrics)` may donate."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxkd.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top

  def run(state, step, batches, directory):
    straight = jax.tree.map(jnp.array, state)
    for batch in batches:
      straight, _ = step(straight, batch)
    resumed = jax.tree.map(jnp.array, state)
    half = len(batches) // 2
    for batch in batches[:half]:
      resumed, _ = step(resumed, batch)
    with Checkpointer(directory, metadata={'task': 'scheme'}) as checkpointer:
      checkpointer.save(half, resumed)
    with Checkpointer(directory, metadata={'task': 'scheme'}) as checkpointer:
      resumed = checkpointer.restore(jax.device_get(state)).state
    for batch in batches[half:]:
      resumed, _ = step(resumed, batch)
    return straight, resumed
  return run


@pytest.fixture(scope='session')
def distill_steps():
  """`distill_steps(step, state, teacher_vars, parallel, batches) -> (state, history)`: a
  distillation step over `batches` under `parallel`, the state back on the host layout and
  each step's metrics."""
  def run(step, state, teacher_vars, parallel, batches):
    state = parallel.replicate(state)
    teacher = parallel.place_teacher(teacher_vars)
    history = []
    for batch in batches:
      state, metrics = step(state, parallel.shard_batch(batch), teacher)
      history.append(jax.device_get(parallel.unreplicate(metrics)))
    return parallel.unreplicate(state), history
  return run
