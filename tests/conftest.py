"""Test setup: 8 simulated CPU devices for every test process, and one persistent compilation
cache for all of them.

XLA reads the device count when jax initialises its backends, so the flag is set here, before
any test module imports jax. Single-device code runs on the first of them. Many tests compile
the same tiny train steps (in pytest's workers and in the runs they start as subprocesses, which
inherit the environment): JAX's persistent cache keeps every program that took over a second to
compile, keyed by its HLO and flags, so each is compiled once per machine.
"""

import os
import tempfile

NUM_SIMULATED_DEVICES = 8

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""),
     f"--xla_force_host_platform_device_count={NUM_SIMULATED_DEVICES}"]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "contrastive_jax_test_compilation_cache"))
