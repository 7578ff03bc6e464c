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
