import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import tempfile

import pytest
import torch

# Classifier caches of the tests go to a fresh directory, never the user's ~/.cache.
os.environ["DECENTDIFF_CACHE"] = tempfile.mkdtemp(prefix="decentdiff-test-cache-")


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Tests compare floating-point results; keep torch's thread count fixed within a test.
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
