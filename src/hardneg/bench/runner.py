"""``hardneg bench``: every method with identical data, encoders, budget and seeds.

Each (method, seed) trains in its own subprocess (``python -m hardneg.train.run``) so that its
peak memory is its own; all share one cached DigitScenes build and one cached text bank
(``data.encode_all``), encoded once up front. A finished run leaves ``metrics.json`` and is
skipped when the bench is started again; an interrupted run resumes from its checkpoint. The
report (tables and plots) is rebuilt at the end, or any time with ``hardneg report``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hardneg.train.config import merge
from hardneg.train.trainer import resolve_config

CORE_METHODS = [
    "infonce", "siglip", "hcl", "dcl", "soft_infonce", "negclip", "ega",
    "bns", "cla", "bacl", "bacl_ega", "grit", "falcon", "falcon_ega",
]  # fmt: skip
ALL_METHODS = [
    *CORE_METHODS,
    "decoupled", "bacl_aggressive", "bacl_shallow", "fixed_q", "progressive", "falcon_batch",
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


PRESETS = {
    # the README's main job: minutes on 2 CPU cores (≈4 epochs of 2000 scenes, so GRIT/FALCON
    # batches and the BNS curriculum get past their first, random epoch)
    "quick": BenchPreset(
        "small", steps=120, batch_size=64, seeds=1,
        methods=["infonce", "siglip", "hcl", "negclip", "ega", "bacl", "grit", "falcon"],
        overrides={"checkpoint_every": 40, "log_every": 5, "optim": {"lr": 2e-3},
                   "selector": {"k": 8}, "model": {"dropout": 0.0}},
    ),
    "full": BenchPreset(
        "quick", steps=600, batch_size=128, seeds=3, methods=list(ALL_METHODS),
        overrides={"checkpoint_every": 100, "log_every": 10, "optim": {"lr": 2e-3},
                   "model": {"dropout": 0.0}},
    ),
}  # fmt: skip


def run_config(preset: BenchPreset, method: str, seed: int, out: Path) -> dict[str, Any]:
    """The resolved config of one (method, seed) of a bench (validated)."""
    values = merge(
        preset.overrides,
        {
            "steps": preset.steps,
            "batch_size": preset.batch_size,
            "seed": seed,
            "progress": False,
            "out_dir": str(out / method / f"seed{seed}"),
            "data": {"preset": preset.data_preset, "encode_all": True},
        },
    )
    return resolve_config(method, values).to_dict()


def _prepare_data(config: dict[str, Any]) -> None:
    """Generate the scenes and encode the shared text bank once (cached on disk)."""
    from hardneg.models.text import MiniLMTextTower
    from hardneg.train.config import config_from_dict
    from hardneg.train.data import load_run_data

    data = config_from_dict(config).data
    load_run_data(data, MiniLMTextTower(data.text_model, max_length=data.max_text_len))


def run_bench(
    preset_name: str,
    out: Path,
    methods: list[str] | None = None,
    seeds: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (method, seed) not finished yet, then write the report."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown bench preset {preset_name!r}; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    methods = list(methods or preset.methods)
    seed_list = list(range(seeds if seeds is not None else preset.seeds))
    configs = {(m, s): run_config(preset, m, s, out) for m in methods for s in seed_list}
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
            },
            indent=2,
        )
    )
    start = time.perf_counter()
    print(f"hardneg bench: preset {preset_name}, {len(configs)} runs → {out}", flush=True)
    _prepare_data(next(iter(configs.values())))
    print(f"  data and text bank ready ({time.perf_counter() - start:.0f} s)", flush=True)
    todo = [
        key for key, cfg in configs.items() if not (Path(cfg["out_dir"]) / "metrics.json").is_file()
    ]
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), desc="bench", unit="run")
    for method, seed in todo:
        config = configs[(method, seed)]
        bar.set_postfix_str(f"{method} seed {seed}")
        Path(config["out_dir"]).mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "hardneg.train.run", json.dumps(config)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
        if proc.returncode != 0:
            (Path(config["out_dir"]) / "error.log").write_text(proc.stdout + proc.stderr)
            tqdm.write(f"  {method} seed {seed} FAILED (see error.log): {proc.stderr[-500:]}")
        else:
            tqdm.write(f"  {method} seed {seed} done in {time.perf_counter() - t0:.0f} s")
        bar.update(1)
    bar.close()
    from hardneg.bench.report import write_report

    report = write_report(out)
    print(f"hardneg bench: finished in {time.perf_counter() - start:.0f} s; see {out}/results.md")
    return report
