"""Test-wide settings: one compute thread per process.

The suite's models are tiny, so a second thread buys nothing inside a step and costs much when processes share
the CI machine's two cores: the test process, the CLI subprocesses and the two torchrun workers would otherwise
each start one thread per core and oversubscribe them (a CPU-bound test measured 0.84 s per step instead of
0.15 s). The variables are set before torch is imported, so every subprocess inherits them; the Makefile sets
them too.
"""

from __future__ import annotations

import os
import tempfile

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"
# Kernels the tests compile (`mambakit info`, the cuda backend) go to a cache of this run, not the user's.
os.environ.setdefault("MAMBAKIT_CACHE_DIR", tempfile.mkdtemp(prefix="mambakit-test-cache-"))

import torch  # noqa: E402 - after the thread settings, which torch reads at import
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)


# CI explores the same fuzz examples each run (a red build must be reproducible); elsewhere hypothesis varies them.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")
