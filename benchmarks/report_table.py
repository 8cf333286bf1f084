"""Write a benchmark's markdown table to ``benchmarks/results/`` and print it."""

from __future__ import annotations

from pathlib import Path


def write_table(lines: list[str], out: Path) -> None:
    """Write ``lines`` (markdown) to ``out`` (folders created) and print them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten to {out}")
