"""The training log: a CSV of every logged step (rewritten on resume so a resumed run's log
equals an uninterrupted run's) and TensorBoard scalars when tensorboard is installed."""

from __future__ import annotations

import csv
from pathlib import Path


class LogWriter:
    """CSV log (always) and TensorBoard scalars (when installed)."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out_dir / "train_log.csv"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # tensorboard is optional
            self.tb = None

    def write(self, logs: dict[str, float]) -> None:
        if not self.enabled:
            return
        rows = []
        if self.path.is_file():
            with self.path.open() as f:
                rows = list(csv.DictReader(f))
        rows = [r for r in rows if float(r["step"]) < logs["step"]] + [logs]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        if self.tb is not None:
            for key, value in logs.items():
                if key != "step":
                    self.tb.add_scalar(key, value, int(logs["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
