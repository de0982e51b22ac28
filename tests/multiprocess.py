"""Helpers for the tests that compare training in 2 processes (gloo, CPU) with training in 1."""

import os
import socket

import torch.distributed as dist


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank, world, port):
    """Join a gloo process group on this machine (nothing to do for a single process)."""
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)


def leave(world):
    if world > 1:
        dist.destroy_process_group()
