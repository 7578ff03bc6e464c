"""Test set-up: eight fake CPU devices, so parallel modes are exercised without accelerators."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU backend at optimisation level 0 compiles the same programs 2-3x faster, which
# is most of this suite's time; numerics stay within every test's tolerance. Subprocesses
# started by the tests inherit it. Speed is measured in benchmarks/, at the default level.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402

# Must happen before JAX's backend starts; every test module sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
