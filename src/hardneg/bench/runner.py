"""``hardneg bench``: every method with identical data, encoders, budget and seeds.

The (method, seed) runs train in ``jobs`` worker processes (``python -m hardneg.train.run
--worker``), one run after another in each, so that MiniLM and the text bank are loaded once
per worker, not once per run; a run's peak memory is measured from its own start
(:class:`~hardneg.train.memory.PeakMemory`). The runs of one data build (all of them, but for
the arms of a sweep such as ``grit@fn5``, see :mod:`hardneg.bench.arms`) share one cached
DigitScenes build and one cached text bank (``data.encode_all``), prepared once up front. A
finished run leaves ``metrics.json`` and is skipped when the bench is started again; an
interrupted run resumes from its checkpoint. The report (tables and plots) is rebuilt at the
end, or any time with ``hardneg report``.

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
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from hardneg.bench.presets import PRESETS, check_overrides, run_config
from hardneg.bench.workers import Worker, default_jobs, expected_cost, stop, train_all
from hardneg.train.config import config_from_dict, parse_overrides
from hardneg.train.run_lock import RunLockedError, exit_on_signals, lock_holder

__all__ = ["prepare_data", "run_bench"]


def prepare_data(config: dict[str, Any]) -> None:
    """Generate the scenes, encode the shared text bank and run the shared pre-training stage
    once, with every core, before the runs start (all three are cached on disk)."""
    from hardneg.models.minilm import MiniLMTextTower
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


def _data_builds(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first config of each distinct data build (the arms of a sweep, ``grit@fn5``, each
    have their own; methods that differ only in what the step draws share one), and of each
    distinct fusion stage (:mod:`hardneg.train.fusion_stage`) on it."""
    from hardneg.train.data import run_data_config
    from hardneg.train.fusion_stage import fusion_stage_config, has_fusion_stage

    builds: dict[str, dict[str, Any]] = {}
    for config in configs:
        cfg = config_from_dict(config)
        data = asdict(run_data_config(cfg))
        # the fusion arms' shared stage is prepared once too (with every core)
        stage = fusion_stage_config(cfg, "").to_dict() if has_fusion_stage(cfg) else None
        if stage is not None:
            stage.pop("progress", None)
        builds.setdefault(json.dumps([data, stage], sort_keys=True), config)
    return list(builds.values())


def _check_unlocked(run_dirs: list[Path]) -> None:
    """Refuse to start while a trainer (of an earlier bench, say) still runs in a directory."""
    for run_dir in run_dirs:
        pid = lock_holder(run_dir)
        if pid is not None:
            raise RunLockedError(
                f"run directory {run_dir} is locked by running process {pid} (a trainer of "
                "another bench or `hardneg train` on it); stop it or wait, or use another --out"
            )


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
        methods: the methods or arms (``grit@fn5``, see :mod:`hardneg.bench.arms`; default:
            the preset's).
        seeds: the number of seeds (default: the preset's).
        jobs: runs trained at once.
        overrides: config values applied to every run, nested (``{"data": {"seed": 3}}``)
            or as ``--set`` strings (``["data.seed=3"]``).

    Raises:
        ValueError: unknown preset, ``jobs < 1``, a bad arm name, an override of a per-run key
            (seed, out_dir, method), or ``out`` already holds a bench of another preset or
            other overrides.
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
    for config in _data_builds(list(configs.values())):
        prepare_data(config)
    print(f"  data and text bank ready ({time.perf_counter() - start:.0f} s)", flush=True)
    todo = [
        key for key, cfg in configs.items() if not (Path(cfg["out_dir"]) / "metrics.json").is_file()
    ]
    todo.sort(key=lambda key: -expected_cost(configs[key]))  # longest first: even tail
    threads = max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="bench", unit="run")
    workers: list[Worker] = []
    stop_signal = signal.SIGTERM
    with exit_on_signals() as received:
        try:
            train_all(todo, workers, configs, jobs, threads, out / "workers.log", bar)
        except KeyboardInterrupt:
            stop_signal = signal.SIGINT
            raise
        finally:  # interrupted: stop the workers (their runs resume next time) and wait
            stop([w.proc for w in workers], received[0] if received else stop_signal)
    bar.close()
    from hardneg.bench.report import write_report

    report = write_report(out)
    print(f"hardneg bench: finished in {time.perf_counter() - start:.0f} s; see {out}/results.md")
    return report
