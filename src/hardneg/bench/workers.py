"""The bench's worker processes: each trains the (method, seed) runs it is given one after
another (``python -m hardneg.train.run --worker``), sharing MiniLM and the text bank between
them; :func:`train_all` keeps ``jobs`` of them busy and :func:`stop` ends them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

__all__ = ["Worker", "default_jobs", "expected_cost", "stop", "train_all"]


def default_jobs() -> int:
    """Runs trained at once: 1 on CUDA; on CPU one per core up to 4 (a run's small matmuls
    scale poorly over threads: on 2 cores, two 1-thread runs train ≈1.5× faster than one
    2-thread run)."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def expected_cost(config: dict[str, Any]) -> float:
    """Relative training time of a run, to start the longest first (FALCON's reward forwards
    cost ≈ +30 %; GRIT-style search spaces and BNS/CLA a little)."""
    mode = config["batch_sampler"]["mode"]
    return (
        1.0
        + 0.3 * (mode in ("falcon", "batch_level"))
        + 0.05 * (mode != "random")
        + 0.05 * (config["miner"]["name"] != "none")
    )


class Worker:
    """One ``python -m hardneg.train.run --worker`` process: it trains the runs it is given one
    after another, sharing MiniLM and the text bank between them; each run writes its own
    ``run.log``, and a status line on the worker's stdout reports its end."""

    def __init__(self, threads: int, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(log, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hardneg.train.run", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self.run: tuple[str, int] | None = None
        self.started = 0.0
        self._pending = b""

    def give(self, key: tuple[str, int], config: dict[str, Any]) -> None:
        """Start training ``config`` (the worker must be idle)."""
        out = Path(config["out_dir"])
        out.mkdir(parents=True, exist_ok=True)
        for name in ("error.log", "run.log"):  # a worker that dies now leaves no stale log
            (out / name).unlink(missing_ok=True)
        assert self.proc.stdin is not None
        self.run, self.started = key, time.perf_counter()
        try:
            self.proc.stdin.write((json.dumps(config) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:  # the worker died: :meth:`poll` reports the run as failed
            pass

    def poll(self) -> bool | None:
        """None while the current run trains; then whether it succeeded (False if the worker
        died). The worker is idle again afterwards (or dead: see :attr:`alive`)."""
        exited = self.proc.poll() is not None  # before reading: a last status line counts
        self._read()
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            try:
                status = json.loads(line)
            except ValueError:  # not a status line
                continue
            self.run = None
            return bool(status["ok"])
        if exited:
            self.run = None
            return False
        return None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            try:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self._pending += chunk

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        """Let an idle worker exit (end of its input) and wait for it."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()


def stop(procs: list[subprocess.Popen], signum: int, timeout: float = 30.0) -> None:
    """Send ``signum`` to the running ``procs``, wait up to ``timeout`` s, then kill the rest."""
    alive = [p for p in procs if p.poll() is None]
    for proc in alive:
        proc.send_signal(signum)
    deadline = time.monotonic() + timeout
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def train_all(
    todo: list[tuple[str, int]],
    workers: list[Worker],
    configs: dict[tuple[str, int], dict[str, Any]],
    jobs: int,
    threads: int,
    log: Path,
    bar: tqdm,
) -> None:
    """Keep ``jobs`` workers training the runs of ``todo`` until all are done (``workers`` is
    filled in place, so that the caller can stop what still runs); a worker that died is
    replaced."""
    while todo or any(w.run for w in workers):
        workers[:] = [w for w in workers if w.alive or w.run]
        while len(workers) < min(jobs, len(todo) + sum(1 for w in workers if w.run)):
            workers.append(Worker(threads, log))
        for worker in workers:
            if worker.run is None and worker.alive and todo:
                key = todo.pop(0)
                worker.give(key, configs[key])
        bar.set_postfix_str(", ".join(f"{w.run[0]} seed {w.run[1]}" for w in workers if w.run))
        time.sleep(0.5)
        for worker in workers:
            key, started = worker.run, worker.started
            if key is None:
                continue
            ok = worker.poll()
            if ok is None:
                continue
            died = None if worker.alive else worker.proc.returncode
            _finish(key, ok, Path(configs[key]["out_dir"]), started, died, log)
            bar.update(1)
    for worker in workers:
        worker.close()


def _finish(
    key: tuple[str, int], ok: bool, out_dir: Path, t0: float, died: int | None, workers_log: Path
) -> None:
    method, seed = key
    if ok:
        tqdm.write(f"  {method} seed {seed} done in {time.perf_counter() - t0:.0f} s")
        return
    log_path = out_dir / "run.log"
    log = log_path.read_text() if log_path.is_file() else "(no run.log)"
    if died is not None:  # the worker itself ended: its exit code and last words
        tail = workers_log.read_text()[-2000:] if workers_log.is_file() else ""
        log += f"\n[worker exited with code {died}]\n{tail}"
    (out_dir / "error.log").write_text(log)
    tqdm.write(f"  {method} seed {seed} FAILED (see {out_dir / 'error.log'}): {log[-500:]}")
