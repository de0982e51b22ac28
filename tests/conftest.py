"""Shared by every test: one intra-op thread. The tests use tiny matrices, for which extra OpenMP threads on
a shared 2-core machine only wait for each other (measured up to ~1000x slower)."""

import os

import pytest
import torch

# Tests that read real data take its folder from one environment variable: a folder holding amazon/Scientific
# (the RecBole/UniSRec benchmark files), glue/ and glue-16shot/ (the official GLUE layout, LM-BFF's splits).
# Without it they are skipped, with a reason. `python data.py --help` fetches the data.
REAL_DATA_DIR = os.environ.get("REAL_DATA_DIR")


def real_data(*parts):
    """The path of a real-data folder, and a skip marker for when it is not there."""
    path = os.path.join(REAL_DATA_DIR, *parts) if REAL_DATA_DIR else None
    reason = (f"REAL_DATA_DIR is not set (it names a folder with {'/'.join(parts)})" if not REAL_DATA_DIR
              else f"{path} is not there")
    return path, pytest.mark.skipif(path is None or not os.path.isdir(path), reason=reason)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
