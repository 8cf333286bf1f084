"""``hardneg bench``: every method with identical data, encoders, budget and seeds.

The (method, seed) runs train in ``jobs`` worker processes (``python -m hardneg.train.run
--worker``), one run after another in each, so that MiniLM and the text bank are loaded once
per worker, not once per run; a run's peak memory is measured from its own start
(:class:`~hardneg.train.memory.PeakMemory`). All share one cached DigitScenes build and one
cached text bank (``data.encode_all``), encoded once up front. A finished run leaves
``metrics.json`` and is skipped when the bench is started again; an interrupted run resumes
from its checkpoint. The report (tables and plots) is rebuilt at the end, or any time with
``hardneg report``.

Stopping the bench (SIGTERM, SIGINT/Ctrl-C, SIGHUP) forwards the signal to the running
trainers and waits for them to exit, so none is left training on its own; a bench refuses to
start while one of its run directories is locked by a live trainer (``run.lock``).

``overrides`` (``hardneg bench --set KEY=VALUE …``) are applied to every run, e.g.
``data.seed=3`` to rerun the whole comparison on another draw of the scenes. They are recorded
in ``bench.json``; a bench directory holds runs of one preset and one set of overrides only,
so starting it again with different ones is refused (use another ``--out``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hardneg.train.config import config_from_dict, merge, parse_overrides
from hardneg.train.methods import method_overrides
from hardneg.train.run_lock import RunLockedError, exit_on_signals, lock_holder
from hardneg.train.validate import resolve_config

CORE_METHODS = [
    "infonce", "siglip", "hcl", "dcl", "soft_infonce", "negclip", "ega",
    "bns", "cla", "bacl", "bacl_ega", "grit", "falcon", "falcon_ega",
]  # fmt: skip
ALL_METHODS = [
    *CORE_METHODS,
    "decoupled", "bacl_aggressive", "bacl_shallow", "cla_detached", "bacl_cla_detached", "fixed_q",
    "progressive", "falcon_batch",
    "mnrl_hardness",
]  # fmt: skip


@dataclass
class BenchPreset:
    """A benchmark budget: data size, steps, batch, seeds and the methods it runs."""

    data_preset: str
    steps: int
    batch_size: int
    seeds: int
    methods: list[str] = field(default_factory=lambda: list(CORE_METHODS))
    overrides: dict[str, Any] = field(default_factory=dict)


# The compositional regime (docs/results/compositional_diagnosis.md): one shared InfoNCE
# pre-training stage per data build (cached) teaches the objects (negatives that name a wrong
# digit, affine jitter, and an object-grounded loss so that the tower's tokens say which digit
# and colour sit where); every method then fine-tunes the attention heads (word order and
# binding are representable) on the frozen tower's cached features. Composition is left to the
# methods. Cross-modal terms only where a method is made of them (BACL's CLA, FALCON's MLM
# reward), on a 1-layer cross-modal transformer whose MLM head scores the corpus's word pieces
# (CPU budget; heads and cross-modal width 64, see the diagnosis, §8). False negatives: 1 % of
# the ordered pairs of random batches, from 4 scene configurations repeated in ≈ 100 train
# scenes each (every caption stays a full one; partial-caption positives stop swap learning,
# see the diagnosis, §6).
_COMPOSITIONAL = {
    "model": {
        "dropout": 0.0,
        "head": "attention",
        "head_width": 64,
        "freeze_image_tower": True,
        "crossmodal_layers": 1,
        "crossmodal_dim": 64,
        "mlm_vocab": "corpus",
    },
    "pretrain": {
        "steps": 1200,
        "batch_size": 128,
        "negative_kinds": ["replace_digit"],
        "augment": True,
        "object_loss_weight": 1.0,
    },
    "aux": {"itm_weight": 0.0, "mlm_weight": 0.0},
    "optim": {"lr": 3e-3, "warmup_steps": 10},
    "selector": {"k": 8},
    "data": {"false_negative_source": "repeats", "false_negative_percent": 1.0},
}
# 2 % of the ordered in-batch pairs of random batches are false negatives (captions that name
# one object of a scene, true of every scene holding it)
_FALSE_NEGATIVES = {"data": {"false_negative_percent": 2.0}}
_COMPOSITIONAL_RUN = {"checkpoint_every": 100, "log_every": 10, **_COMPOSITIONAL}
PRESETS = {
    # the README's main job (`make bench`, ≤ 15 min on 2 CPU cores): the headline method of
    # each paper and the baselines its claims compare with, 3 seeds
    "compositional": BenchPreset(
        "small", steps=600, batch_size=64, seeds=3,
        methods=["infonce", "negclip", "ega", "bacl", "grit", "falcon"],
        overrides=_COMPOSITIONAL_RUN,
    ),
    # every claim of the claims table (BACL's parts and curricula, FALCON's batch-level
    # variant and search-space sizes, MNRL)
    "compositional-full": BenchPreset(
        "small", steps=600, batch_size=64, seeds=3,
        methods=["infonce", "negclip", "ega", "mnrl_hardness", "bns", "cla", "bacl",
                 "bacl_aggressive", "bacl_shallow", "grit", "falcon", "falcon_batch",
                 "falcon_space2", "falcon_space32"],
        overrides=_COMPOSITIONAL_RUN,
    ),
    # towers from scratch, 8 methods, one seed: the smoke run (`make bench-quick`)
    "quick": BenchPreset(
        "small", steps=100, batch_size=64, seeds=1,
        methods=["infonce", "siglip", "hcl", "negclip", "ega", "bacl", "grit", "falcon"],
        overrides={"checkpoint_every": 40, "log_every": 5, "optim": {"lr": 2e-3},
                   "selector": {"k": 8}, "model": {"dropout": 0.0}, **_FALSE_NEGATIVES},
    ),
    "full": BenchPreset(
        "quick", steps=600, batch_size=128, seeds=3, methods=list(ALL_METHODS),
        overrides={"checkpoint_every": 100, "log_every": 10, "optim": {"lr": 2e-3},
                   "model": {"dropout": 0.0}, **_FALSE_NEGATIVES},
    ),
}  # fmt: skip


_PER_RUN_KEYS = {"seed": "--seeds", "out_dir": "--out", "method": "--methods"}


def check_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` if none of them is a key the bench sets per run (else ValueError)."""
    for key, option in _PER_RUN_KEYS.items():
        if key in overrides:
            raise ValueError(
                f"--set {key}=… cannot be applied to a bench (it sets {key} per run); "
                f"use hardneg bench {option} instead"
            )
    return overrides


def run_config(
    preset: BenchPreset,
    method: str,
    seed: int,
    out: Path,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The resolved config of one (method, seed) of a bench (validated): the preset's values,
    then the method's own (a method's defining term wins over a preset default, e.g. FALCON's
    MLM weight where the preset turns the cross-modal terms off), then the user's
    ``overrides`` (``--set``, which win over both), then the per-run seed and directory."""
    preset_values = merge(
        preset.overrides,
        {
            "steps": preset.steps,
            "batch_size": preset.batch_size,
            "progress": False,
            "data": {"preset": preset.data_preset, "encode_all": True},
        },
    )
    values = merge(
        merge(merge(preset_values, method_overrides(method)), check_overrides(overrides or {})),
        {"seed": seed, "out_dir": str(out / method / f"seed{seed}")},
    )
    return resolve_config(method, values).to_dict()


def prepare_data(config: dict[str, Any]) -> None:
    """Generate the scenes, encode the shared text bank and run the shared pre-training stage
    once, with every core, before the runs start (all three are cached on disk)."""
    from hardneg.models.text import MiniLMTextTower
    from hardneg.train.data import load_run_data
    from hardneg.train.trainer import Trainer

    cfg = config_from_dict(config)
    if cfg.pretrain.steps:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            Trainer(replace(cfg, progress=True))  # builds the data, pre-trains or finds the cache
        finally:
            torch.set_num_threads(threads)
        return
    load_run_data(cfg.data, MiniLMTextTower(cfg.data.text_model, max_length=cfg.data.max_text_len))


def default_jobs() -> int:
    """Runs trained at once: 1 on CUDA; on CPU one per core up to 4 (a run's small matmuls
    scale poorly over threads: on 2 cores, two 1-thread runs train ≈1.5× faster than one
    2-thread run)."""
    if torch.cuda.is_available():
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _expected_cost(config: dict[str, Any]) -> float:
    """Relative training time of a run, to start the longest first (FALCON's reward forwards
    cost ≈ +30 %; GRIT-style search spaces and BNS/CLA a little)."""
    mode = config["sampler"]["mode"]
    return (
        1.0
        + 0.3 * (mode in ("falcon", "batch_level"))
        + 0.05 * (mode != "random")
        + 0.05 * (config["selector"]["name"] != "none")
    )


class _Worker:
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


def _check_unlocked(run_dirs: list[Path]) -> None:
    """Refuse to start while a trainer (of an earlier bench, say) still runs in a directory."""
    for run_dir in run_dirs:
        pid = lock_holder(run_dir)
        if pid is not None:
            raise RunLockedError(
                f"run directory {run_dir} is locked by running process {pid} (a trainer of "
                "another bench or `hardneg train` on it); stop it or wait, or use another --out"
            )


def _stop(procs: list[subprocess.Popen], signum: int, timeout: float = 30.0) -> None:
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


def _check_same_bench(out: Path, preset_name: str, overrides: dict[str, Any]) -> None:
    """Refuse to add runs of another preset or other overrides to an existing bench."""
    path = out / "bench.json"
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    before = (info.get("preset"), info.get("overrides") or {})
    if before != (preset_name, overrides):
        raise ValueError(
            f"{out} holds a bench of preset {before[0]!r} with overrides {before[1]}; this one "
            f"is preset {preset_name!r} with overrides {overrides}, and mixing their runs would "
            "compare unlike runs: pass another --out (or repeat the same --set)"
        )


def _leaves(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a nested config dict."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_finished_runs(configs: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Refuse a finished run (``metrics.json``) whose saved config is not the one this bench
    would train (e.g. a run of an older version of the preset): it would be reused as is."""
    for cfg in configs.values():
        run = Path(cfg["out_dir"])
        saved_path = run / "config.json"
        if not (run / "metrics.json").is_file() or not saved_path.is_file():
            continue
        # the saved config with today's defaults for keys added since it was written
        saved = _leaves(config_from_dict(json.loads(saved_path.read_text())).to_dict())
        wanted = _leaves(cfg)
        # a bench directory may be moved or copied: where a run lives is not what it trained
        differ = sorted(
            k
            for k in saved.keys() | wanted.keys()
            if k != "out_dir" and saved.get(k) != wanted.get(k)
        )
        if differ:
            key = differ[0]
            raise ValueError(
                f"{run} was trained with {key}={saved.get(key)!r}, this bench sets "
                f"{wanted.get(key)!r} ({len(differ)} keys differ): delete that run or pass "
                "another --out"
            )


def run_bench(
    preset_name: str,
    out: Path,
    methods: list[str] | None = None,
    seeds: int | None = None,
    jobs: int | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) not finished yet, ``jobs`` at a time (default
    :func:`default_jobs`), then write the report.

    Args:
        preset_name: a key of :data:`PRESETS`.
        out: the bench directory.
        methods: the methods (default: the preset's).
        seeds: the number of seeds (default: the preset's).
        jobs: runs trained at once.
        overrides: config values applied to every run, nested (``{"data": {"seed": 3}}``)
            or as ``--set`` strings (``["data.seed=3"]``).

    Raises:
        ValueError: unknown preset, ``jobs < 1``, an override of a per-run key (seed,
            out_dir, method), or ``out`` already holds a bench of another preset or other
            overrides.
    """
    if preset_name not in PRESETS:
        raise ValueError(f"unknown bench preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    preset = PRESETS[preset_name]
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overrides = check_overrides(overrides or {})
    methods = list(methods or preset.methods)
    seed_list = list(range(seeds if seeds is not None else preset.seeds))
    configs = {(m, s): run_config(preset, m, s, out, overrides) for m in methods for s in seed_list}
    jobs = jobs or default_jobs()
    _check_same_bench(out, preset_name, overrides)
    _check_finished_runs(configs)
    _check_unlocked([Path(c["out_dir"]) for c in configs.values()])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(
        json.dumps(
            {
                "preset": preset_name,
                "data_preset": preset.data_preset,
                "methods": methods,
                "seeds": seed_list,
                "steps": preset.steps,
                "batch_size": preset.batch_size,
                "reference": "infonce",
                "overrides": overrides,
                "jobs": jobs,
            },
            indent=2,
        )
    )
    start = time.perf_counter()
    print(f"hardneg bench: preset {preset_name}, {len(configs)} runs, {jobs} at a time → {out}")
    prepare_data(next(iter(configs.values())))
    print(f"  data and text bank ready ({time.perf_counter() - start:.0f} s)", flush=True)
    todo = [
        key for key, cfg in configs.items() if not (Path(cfg["out_dir"]) / "metrics.json").is_file()
    ]
    todo.sort(key=lambda key: -_expected_cost(configs[key]))  # longest first: even tail
    threads = max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="bench", unit="run")
    workers: list[_Worker] = []
    stop_signal = signal.SIGTERM
    with exit_on_signals() as received:
        try:
            _train_all(todo, workers, configs, jobs, threads, out / "workers.log", bar)
        except KeyboardInterrupt:
            stop_signal = signal.SIGINT
            raise
        finally:  # interrupted: stop the workers (their runs resume next time) and wait
            _stop([w.proc for w in workers], received[0] if received else stop_signal)
    bar.close()
    from hardneg.bench.report import write_report

    report = write_report(out)
    print(f"hardneg bench: finished in {time.perf_counter() - start:.0f} s; see {out}/results.md")
    return report


def _train_all(
    todo: list[tuple[str, int]],
    workers: list[_Worker],
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
            workers.append(_Worker(threads, log))
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
