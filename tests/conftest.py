"""Test-wide settings: 4 forced host devices for the multi-device tests, JAX's persistent compilation cache
in a temp dir so repeated runs (and xdist workers) reuse compiled programs, and a Ctrl-C handler."""

import os
import signal
import tempfile

# The suite tests Ctrl-C / SIGTERM handling (tests/test_train.py), in this process and in the training
# processes it starts. A shell starts a background job (`pytest ... &`, `nohup ... &`) with SIGINT ignored,
# and an ignored signal stays ignored in every child, where the trainer then keeps it so (on purpose: it
# respects `nohup`). Give the suite Python's usual Ctrl-C handler, so that those tests test the trainer,
# not the way the suite was launched; the children then start with the default action.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

# Must happen before jax is imported anywhere.
# The suite is dominated by XLA compilation of tiny programs, not by running them: LLVM's optimisation
# passes (backend level 0 skips them) cost about a third of each compile. They change float32 results
# by rounding only (measured on one tracker training step of the tiny config: the loss 162.57 moves by
# 4e-4, Adam's first update, ~lr * sign(g), amplifies that on parameters whose gradient is ~0), exactly
# as a change of reduction order does, which every tolerance of the suite must absorb anyway; so the
# tests ask for level 0 unless XLA_FLAGS sets a level.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=4"
if "--xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Through the environment, so that the scripts the tests run as subprocesses (demo, infer, ...) share it.
# A program that calls the host (the scipy Hungarian through `jax.pure_callback`) is never a cache hit:
# its callback's address is part of the cache key. Tests that compile one such step several times use
# the device matcher.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "o2vis_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))
