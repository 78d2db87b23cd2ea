import os

import numpy as np
import pytest
import torch

# The estimators' default n_threads='auto' measures the idle cores at each fit: tests that compare two fits bit for bit
# would then depend on the machine's load (a distributed test's ranks still running, CI neighbours). The suite runs
# under torch's fixed count instead; tests/drfm/test_threads.py exercises 'auto' and this variable explicitly.
os.environ.setdefault("DRFM_THREADS", "none")

DTYPES = [torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_spd(d, *, rank=None, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, rank or d, generator=g, dtype=torch.float64)
    m = a @ a.T / (rank or d)
    return m.to(dtype)


def sym_sqrt(m):
    w, v = torch.linalg.eigh(m.double())
    return ((v * w.clamp_min(0).sqrt()) @ v.T).to(m.dtype)
