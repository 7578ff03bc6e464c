"""Test set-up: eight fake CPU devices, so parallel modes are exercised without accelerators,
and one compilation cache for the whole run (every pytest-xdist worker and every experiment
subprocess), so a program several tests build is compiled once."""
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU backend at optimisation level 0 compiles the same programs 2-3x faster, which
# is most of this suite's time; numerics stay within every test's tolerance. Subprocesses
# started by the tests inherit it. Speed is measured in benchmarks/, at the default level.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
# The controller process sets it before the workers start, so they all share it.
_OWN_CACHE = "JAXKD_TEST_COMPILATION_CACHE" not in os.environ  # "off": no cache
if _OWN_CACHE:
  os.environ["JAXKD_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jaxkd-test-cache-")
CACHE = os.environ["JAXKD_TEST_COMPILATION_CACHE"]

import jax  # noqa: E402

# Must happen before JAX's backend starts; every test module sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
if CACHE != "off":
  jax.config.update("jax_compilation_cache_dir", CACHE)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_sessionfinish(session, exitstatus):
  """The process that made the cache removes it, once every worker is done."""
  del exitstatus
  if _OWN_CACHE and CACHE != "off" and not hasattr(session.config, "workerinput"):
    shutil.rmtree(CACHE, ignore_errors=True)
