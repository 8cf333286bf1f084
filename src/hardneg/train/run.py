"""Train one method end to end and evaluate it: what ``hardneg train`` and the bench run.

Writes into the run directory: ``config.json``, ``train_log.csv`` (+ ``tb/``),
``checkpoint.pt`` (resumable), ``metrics.json`` (test and test_novel metrics, step time,
peak memory, FN rate of the selected negatives) and ``per_item.npz`` (the per-query / per-probe
outcomes those metrics average, see :mod:`hardneg.eval.items`). Works under ``torchrun``
(rank 0 writes). While it runs, the directory is locked (``run.lock`` with the PID, see
:mod:`hardneg.train.run_lock`): a second run on it is refused, and temp files that a killed
run left behind are removed on start.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hardneg.data.atomic_files import atomic_write, remove_stale_temps
from hardneg.eval.items import pack_items
from hardneg.train.config import TrainConfig, config_from_dict
from hardneg.train.memory import PeakMemory
from hardneg.train.run_lock import RunLock, exit_on_signals
from hardneg.train.trainer import Trainer
from hardneg.train.validate import validate_config


def init_distributed() -> None:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on CUDA) when launched by it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)


def train_and_evaluate(
    config: TrainConfig, resume: bool = True, trainer: Trainer | None = None
) -> dict[str, Any] | None:
    """Train (resuming from ``out_dir/checkpoint.pt``), evaluate, write ``metrics.json``.

    Nothing in ``out_dir`` is written before the run is known to be valid: a directory locked
    by a live process (:class:`~hardneg.train.run_lock.RunLockedError`) or a checkpoint of a
    different configuration (ValueError) leaves it as it was. Once valid, temp files that a
    killed run left behind (e.g. a ``.checkpoint.pt.*.tmp``) are removed.

    Returns the result dict on rank 0 (None on other ranks).
    """
    validate_config(config)
    init_distributed()
    # torchrun: one lock per run, held by rank 0 (the only rank that writes)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with RunLock(config.out_dir) if main_rank else contextlib.nullcontext():
        return _train_and_evaluate(config, resume, trainer)


def _train_and_evaluate(
    config: TrainConfig, resume: bool, trainer: Trainer | None
) -> dict[str, Any] | None:
    out = Path(config.out_dir)
    trainer = trainer or Trainer(config)
    if resume:
        trainer.resume()  # raises on a checkpoint of another configuration
    if trainer.rank == 0:
        # we hold the lock, so no one else writes here: every temp file is a killed write's
        remove_stale_temps(out, locked=True)
        text = json.dumps(config.to_dict(), indent=2)
        atomic_write(out / "config.json", lambda f: f.write(text.encode()))
    with PeakMemory(trainer.device) as peak:
        trainer.fit()
    trainer.save()
    if trainer.rank != 0:
        return None
    # a CLIP model: the trained logit scale written back, saved in its own library's format
    exported = trainer.recipe.export(out, float(trainer.loss_fn.scale().detach()))
    step_times = trainer.step_times[3:] or trainer.step_times  # the first steps warm up
    result: dict[str, Any] = {
        "method": config.method,
        "seed": config.seed,
        "steps": trainer.step,
        "step_time": statistics.median(step_times) if step_times else None,
        "peak_mem_mib": peak.mib,
        **trainer.summary(),
        "exported": None if exported is None else str(exported),
        "metrics": {},
    }
    items = {}
    for name, evaluation in trainer.recipe.evaluate().items():
        result["metrics"][name], items[name] = evaluation.metrics, evaluation.items
    atomic_write(out / "per_item.npz", lambda f: np.savez(f, **pack_items(items)))
    if trainer.selected_bs:
        bs = torch.cat(trainer.selected_bs).numpy()
        atomic_write(out / "selected_bs.npy", lambda f: np.save(f, bs))
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def evaluate_run(
    run_dir: Path, data: str | None = None, compositional: str | None = None
) -> dict[str, Any]:
    """Evaluate the checkpoint in ``run_dir``: on the run's evaluation data, or on the data
    spec ``data`` (multi-positive retrieval), with compositional accuracy on the probes JSON
    ``compositional`` (files recipe)."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; train first with `hardneg train --out`")
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = config_from_dict(state["config"])
    if data is not None:
        from hardneg.data.sources import parse_data_spec

        parse_data_spec(data, key="--data")
    trainer = Trainer(replace(config, progress=False))
    trainer.load_state_dict(state)
    evaluations = trainer.recipe.evaluate(data, compositional)
    return {name: e.metrics for name, e in evaluations.items()}


def main(argv: list[str] | None = None) -> int:
    """``python -m hardneg.train.run CONFIG_JSON``: one bench run in its own process."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hardneg.train.run CONFIG_JSON", file=sys.stderr)
        return 2
    with exit_on_signals():  # SIGTERM/SIGHUP from the bench: release the lock and stop
        train_and_evaluate(config_from_dict(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
