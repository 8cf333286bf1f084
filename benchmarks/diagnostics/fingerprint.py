"""Fingerprint the trainer: per-step logs and final metrics of short runs of a few methods.

Run it on two commits (e.g. before and after a refactor) and compare: a change that must not
alter training shows identical logs and metrics, bit for bit. It runs on one thread: with two,
the order of parallel float sums varies between runs of the same commit on a busy machine (the
last digits of the losses differ, and near-chance ITM probe scores flip), so only a one-thread
run is comparable bit for bit.

    python benchmarks/diagnostics/fingerprint.py run before.json      # on commit A
    python benchmarks/diagnostics/fingerprint.py run after.json       # on commit B
    python benchmarks/diagnostics/fingerprint.py compare before.json after.json
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

METHODS = ["infonce", "bacl", "falcon", "negclip", "grit", "ega"]


def run(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from hardneg.train.run import train_and_evaluate
    from hardneg.train.trainer import Trainer
    from hardneg.train.validate import resolve_config

    result, data = {}, None
    root = Path(tempfile.mkdtemp())
    for method in METHODS:
        cfg = resolve_config(
            method,
            {
                "steps": 12,
                "batch_size": 32,
                "log_every": 4,
                "checkpoint_every": 0,
                "progress": False,
                "out_dir": str(root / method),
                "data": {"encode_all": True},
                "batch_sampler": {"search_space_batches": 2, "falcon_update_interval": 4},
            },
        )
        trainer = Trainer(cfg, data=data)
        data = data or (trainer.bank, trainer.splits)
        res = train_and_evaluate(cfg, resume=False, trainer=trainer)
        with (root / method / "train_log.csv").open() as f:
            log = list(csv.DictReader(f))
        result[method] = {"log": log, "metrics": res["metrics"]}
        print(method, res["metrics"]["test"]["i2t_R@1"], flush=True)
    out.write_text(json.dumps(result, indent=1, default=str))


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    differ = 0
    for method in a:
        log_diffs = [
            (k, r1[k], r2.get(k))
            for r1, r2 in zip(a[method]["log"], b[method]["log"])
            for k in r1
            if k != "step_time" and r1[k] != r2.get(k)
        ]
        ma, mb = a[method]["metrics"], b[method]["metrics"]
        metric_diffs = [
            (s, k) for s in ma for k in ma[s] if ma[s][k] != mb[s][k] and ma[s][k] == ma[s][k]
        ]
        differ += len(log_diffs) + len(metric_diffs)
        print(f"{method}: {len(log_diffs)} log and {len(metric_diffs)} metric differences")
    return int(differ > 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(Path(sys.argv[2]))
    else:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
