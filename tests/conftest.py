"""Test setup: 8 simulated CPU devices for every test process.

XLA reads the device count when jax initialises its backends, so the flag is set here, before
any test module imports jax. Single-device code runs on the first of them.
"""

import os

NUM_SIMULATED_DEVICES = 8

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     f"--xla_force_host_platform_device_count={NUM_SIMULATED_DEVICES}"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
