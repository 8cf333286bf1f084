"""Run a function on N gloo (CPU) ranks, torchrun-equivalent, and collect each rank's result."""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, out_dir, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = fn(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args):
    """Spawn ``world_size`` processes running ``fn(rank, world, *args)``; return their results.

    ``fn`` must be a module-level function (it is pickled by name) returning tensors/dicts.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_entry, args=(world_size, _free_port(), out_dir, fn, args), nprocs=world_size)
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(world_size)]


def train_step_worker(rank, world, config, n_items):
    """One ``Trainer`` step on items ``0..n_items-1`` under ``run_distributed``: the rank's
    logged loss and its parameters after the step."""
    from hardneg.train.config import config_from_dict
    from hardneg.train.trainer import Trainer

    trainer = Trainer(config_from_dict(config))
    logs = trainer.train_step(list(range(n_items)))
    return {"loss": logs["loss"], "params": trainer.model.trainable_state_dict()}
