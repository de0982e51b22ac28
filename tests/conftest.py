"""Shared by every test: one intra-op thread. The tests use tiny matrices, for which extra OpenMP threads on
a shared 2-core machine only wait for each other (measured up to ~1000x slower)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
