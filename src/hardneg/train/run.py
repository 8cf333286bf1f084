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
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hardneg.data.atomic_files import atomic_write, remove_stale_temps
from hardneg.errors import UserError, one_line, user_errors
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
    with user_errors():  # the data, the model spec, the run directory: the user's to fix
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
    if not result["metrics"]:
        result["note"] = (
            "no evaluation data: set data.eval_dataset=SPEC (or evaluate later with "
            "hardneg eval RUN --data SPEC)"
        )
        print(f"hardneg: {result['note']}", file=sys.stderr)
    atomic_write(out / "per_item.npz", lambda f: np.savez(f, **pack_items(items)))
    if trainer.selected_boundary_scores:
        bs = torch.cat(trainer.selected_boundary_scores).numpy()
        atomic_write(out / "selected_boundary_scores.npy", lambda f: np.save(f, bs))
    atomic_write(out / "metrics.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def evaluate_run(
    run_dir: Path,
    data: str | None = None,
    compositional: str | None = None,
    rerank: int | None = None,
    data_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint in ``run_dir``: on the run's evaluation data, or on the data
    spec ``data`` (multi-positive retrieval), with compositional accuracy on the probes JSON
    ``compositional`` (files recipe). ``rerank``: candidates per query re-ranked by the
    cross-modal head (``*_rerank`` metrics; 0: none; None: the run's ``eval_rerank_k``); a
    model without that head is refused. ``data_options``: ``data`` settings that say how to
    read the evaluation data (``images``, ``csv_img_key``, …, as ``hardneg train`` takes them),
    replacing the run's."""
    path = run_dir / "checkpoint.pt"
    with user_errors():  # the run directory, its checkpoint, the data spec: the user's
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; train first with `hardneg train --out`"
            )
        if rerank is not None and rerank < 0:
            raise ValueError(f"--rerank must be ≥ 0 (0: no re-ranking), got {rerank}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        config = config_from_dict(state["config"])
        if data is not None:
            from hardneg.data.specs import parse_data_spec

            parse_data_spec(data, key="--data")
        if rerank is not None:
            config = replace(config, eval_rerank_k=rerank)
        trainer = Trainer(replace(config, progress=False))
        trainer.load_state_dict(state)
        if data_options:  # read at evaluation time: the training source stays as it was
            options = dict(data_options)
            if options.get("images") is not None:
                options["images"] = str(Path(options["images"]).resolve())
            recipe_cfg = trainer.recipe.cfg
            trainer.recipe.cfg = replace(recipe_cfg, data=replace(recipe_cfg.data, **options))
        if rerank and (trainer.model.crossmodal is None or not config.crossmodal.itm_weight):
            raise ValueError(
                f"--rerank re-ranks with the cross-modal head's ITM score, and {run_dir}'s "
                "method trains no ITM head (crossmodal.itm_weight=0); evaluate it without "
                "--rerank, or train it with one (e.g. --method albef, or --set "
                "crossmodal.itm_weight=1)"
            )
    try:
        evaluations = trainer.recipe.evaluate(data, compositional)
    except FileNotFoundError as err:  # an image or file the evaluation data names is missing
        raise UserError(one_line(err)) from err
    return {name: e.metrics for name, e in evaluations.items()}


class SharedData:
    """The frozen text tower and DigitScenes data of the last run, for the next run of a
    worker that reads the same data (the bench's runs all do): each run then skips loading
    MiniLM and the text bank (≈ 10 s on a CPU core). Other recipes build their own."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.tower: Any = None
        self.data: Any = None

    @staticmethod
    def _key(config: TrainConfig) -> str | None:
        from hardneg.train.data import run_data_config
        from hardneg.train.trainer import uses_digitscenes_recipe

        if not uses_digitscenes_recipe(config):
            return None
        return json.dumps(asdict(run_data_config(config)), sort_keys=True)

    def trainer(self, config: TrainConfig) -> Trainer:
        """A :class:`Trainer` of ``config``, built on the shared tower and data when they fit."""
        key = self._key(config)
        if key is None:
            return Trainer(config)
        if key == self.key:
            trainer = Trainer(config, tower=self.tower, data=self.data)
        else:
            trainer = Trainer(config)
        self.key, self.tower = key, trainer.tower
        self.data = (trainer.bank, trainer.splits)
        return trainer


def serve(lines: Any, status: Any) -> None:
    """Train one config per JSON line of ``lines``, in this process, one after another
    (``python -m hardneg.train.run --worker``: the bench's workers). A run's output goes to
    its ``run.log``; a JSON line ``{"out_dir", "ok"}`` on ``status`` reports each run's end.
    A failed run (its traceback in ``run.log``) does not stop the worker."""
    import traceback

    shared = SharedData()
    for line in lines:
        if not line.strip():
            continue
        values = json.loads(line)
        out = Path(values["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        ok = True
        with open(out / "run.log", "w") as log, _redirected(log):
            try:
                config = config_from_dict(values)
                validate_config(config)
                train_and_evaluate(config, trainer=shared.trainer(config))
            except Exception:  # reported in the run's log and status; the next run goes on
                traceback.print_exc()
                ok = False
        _release_freed_memory()  # the next run's peak memory is its own growth
        status.write(json.dumps({"out_dir": str(out), "ok": ok}) + "\n")
        status.flush()


def _release_freed_memory() -> None:
    """Return the heap an ended run freed to the OS (glibc keeps it otherwise), so that the next
    run's :class:`~hardneg.train.memory.PeakMemory` grows from the same resident set as in a
    fresh process instead of reusing freed pages. A no-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def _redirected(log: Any) -> Any:
    """File descriptors 1 and 2 (Python's and C libraries' output) go to ``log`` inside."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def main(argv: list[str] | None = None) -> int:
    """``python -m hardneg.train.run CONFIG_JSON``: one bench run in its own process;
    ``python -m hardneg.train.run --worker``: runs read from stdin (see :func:`serve`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hardneg.train.run CONFIG_JSON | --worker", file=sys.stderr)
        return 2
    with exit_on_signals():  # SIGTERM/SIGHUP from the bench: release the lock and stop
        if argv[0] == "--worker":
            status = os.fdopen(os.dup(1), "w")  # the bench reads it; runs write to their logs
            os.dup2(2, 1)  # stray output between runs goes to the worker's log, not the status
            serve(sys.stdin, status)
        else:
            train_and_evaluate(config_from_dict(json.loads(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
