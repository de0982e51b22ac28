"""Helpers for the tests that compare training in 2 processes (gloo, CPU) with training in 1."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


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


def one_then_two(worker, folder):
    """Run worker(rank, world, port, out_path) as 1 process, then as 2; each saves its result to out_path
    (with {rank} filled in). Returns the 1-process result and the list of the 2 processes' results."""
    worker(0, 1, None, os.path.join(folder, "one{rank}.pt"))
    mp.spawn(worker, args=(2, free_port(), os.path.join(folder, "two{rank}.pt")), nprocs=2)
    return (torch.load(os.path.join(folder, "one0.pt")),
            [torch.load(os.path.join(folder, f"two{r}.pt")) for r in (0, 1)])
