"""``hardneg data check SPEC``: read a whole source before training on it.

Training finds a corrupt image only when the batch that holds it is drawn, possibly hours in.
:func:`check_source` opens a karpathy / csv / hf source as training would, decodes every image,
and reports the rows that fail, caption statistics and the splits the source has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from hardneg.data.karpathy import split_counts
from hardneg.data.sources import open_source
from hardneg.data.specs import parse_data_spec, saved_splits

__all__ = ["DataReport", "check_source"]


@dataclass
class DataReport:
    """What :func:`check_source` found.

    Attributes:
        source: the source's own description (kind, path, split, sizes).
        images, captions: how many items and captions it holds.
        bad: ``(item index, message)`` of every image that failed to load.
        words: (min, mean, max) caption length in words.
        splits: image count of each split the file holds (karpathy and hf), else {}.
    """

    source: str
    images: int
    captions: int
    bad: list[tuple[int, str]] = field(default_factory=list)
    words: tuple[int, float, int] = (0, 0.0, 0)
    splits: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        """A few lines for the terminal."""
        low, mean, high = self.words
        lines = [
            self.source,
            f"captions: {self.captions} ({self.captions / max(self.images, 1):.2f} per image), "
            f"words per caption min {low} / mean {mean:.1f} / max {high}",
        ]
        if self.splits:
            lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in self.splits.items()))
        lines.append(f"images decoded: {self.images - len(self.bad)} of {self.images}")
        lines += [f"  bad item {index}: {message}" for index, message in self.bad[:20]]
        if len(self.bad) > 20:
            lines.append(f"  … and {len(self.bad) - 20} more")
        return "\n".join(lines)


def _splits(spec: str) -> dict[str, int]:
    parsed = parse_data_spec(spec)
    if parsed.kind == "karpathy" and parsed.path is not None:
        return split_counts(parsed.path)
    if parsed.kind == "hf" and saved_splits(parsed.path):
        import datasets

        table = datasets.load_from_disk(parsed.path)
        return {name: len(split) for name, split in table.items()}
    return {}


def check_source(data: Any, spec: str | None = None, progress: bool = True) -> DataReport:
    """Open ``spec`` (default ``data.dataset``) as training does and decode every image.

    Args:
        data: the :class:`~hardneg.train.config.DataConfig` (column keys, images folder).
        spec: a karpathy / csv / hf data spec.
        progress: show a progress bar.

    Raises:
        ValueError: a digitscenes or wds spec (built in / streamed: nothing to check here), or
            what opening the source raises (missing file, column, …).
    """
    spec = spec or data.dataset
    kind = parse_data_spec(spec).kind
    if kind in ("digitscenes", "wds"):
        raise ValueError(
            f"hardneg data check reads karpathy / csv / hf sources; {kind} is "
            + ("built in" if kind == "digitscenes" else "streamed: check its shards with tar")
        )
    dataset = open_source(data, image_size=32, spec=spec)
    bad = []
    for index in tqdm(range(len(dataset)), desc="decoding", disable=not progress, leave=False):
        try:
            dataset.load_image(index)
        except Exception as err:  # any failure to decode is what the report is for
            bad.append((index, " ".join(str(err).split())))
    lengths = [len(c.split()) for item in dataset.captions for c in item]
    words = (min(lengths), sum(lengths) / len(lengths), max(lengths)) if lengths else (0, 0, 0)
    return DataReport(
        source=dataset.describe(),
        images=len(dataset),
        captions=len(lengths),
        bad=bad,
        words=words,
        splits=_splits(spec),
    )
