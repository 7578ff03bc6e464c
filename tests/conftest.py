"""Test set-up: eight fake CPU devices, so parallel modes are exercised without accelerators."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Must happen before JAX's backend starts; every test module sees 8 CPU devices.
jax.config.update("jax_num_cpu_devices", 8)
