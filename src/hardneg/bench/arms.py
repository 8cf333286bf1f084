"""Bench arms: a method, or a method with one data setting swept to a value.

An arm is what a bench lists in its methods (``BenchPreset.methods``, ``hardneg bench
--methods``) and names a run directory (``RUN/<arm>/seed<k>``) and a report row. ``grit`` is
the method with the bench's settings; ``grit@fn5`` is GRIT with
``data.false_negative_percent = 5`` and everything else as ``grit``'s. The swept settings are
the entries of :data:`SWEEPS` (one key each, e.g. ``fn``); a value is written without
needless zeros (``fn0``, ``fn0.5``, ``fn5``: one name per value).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

__all__ = ["SWEEPS", "Arm", "Sweep", "parse_arm"]


class Sweep(NamedTuple):
    """A data setting an arm may set: ``section.field`` of the run config, its label in the
    report and what the report says of it."""

    section: str
    field: str
    label: str
    note: str

    @property
    def key(self) -> str:
        """The dotted config key (``data.false_negative_percent``)."""
        return f"{self.section}.{self.field}"


SWEEPS: dict[str, Sweep] = {
    "fn": Sweep(
        "data",
        "false_negative_percent",
        "FN rate %",
        "Each rate is a data build of its own: random train batches hold that share of false "
        "negatives (with `data.false_negative_source=repeats`: duplicate scene configurations), "
        "and the test split repeats the same configurations at the same rate, every duplicate's "
        "captions relevant to it, so a model that pushed duplicates apart loses mAP and R@K. "
        "*Batch FN %* is the share the run's batches actually held, averaged over its steps "
        "(a hard-batch sampler such as GRIT gathers duplicates: above the rate).",
    ),
}
"""Arm suffix → the setting it sweeps."""

_NUMBER = r"(?:0|[1-9]\d*)(?:\.\d*[1-9])?"
_ARM = re.compile(rf"(?P<method>[A-Za-z0-9_]+)(?:@(?P<key>[a-z]+)(?P<value>{_NUMBER}))?")


class Arm(NamedTuple):
    """A parsed arm: the method, and the swept setting's suffix and value (None: not swept)."""

    method: str
    sweep: str | None = None
    value: float | None = None

    @property
    def name(self) -> str:
        """The arm's name (``grit``, ``grit@fn5``)."""
        return self.method if self.sweep is None else f"{self.method}@{self.sweep}{self.value:g}"

    def overrides(self) -> dict[str, Any]:
        """The config values the arm sets on top of its method's (nested; {} when plain)."""
        if self.sweep is None:
            return {}
        setting = SWEEPS[self.sweep]
        return {setting.section: {setting.field: self.value}}

    def with_method(self, method: str) -> Arm:
        """The same sweep point of another method (``grit@fn5`` → ``infonce@fn5``)."""
        return self._replace(method=method)


def parse_arm(name: str) -> Arm:
    """The :class:`Arm` a name writes (the method itself is checked when its config resolves).

    Raises:
        ValueError: ``name`` is neither a method name nor ``<method>@<sweep><value>`` with a
            sweep of :data:`SWEEPS` and a value without needless zeros.

    Example:
        >>> parse_arm("grit@fn5"), parse_arm("infonce").name
        (Arm(method='grit', sweep='fn', value=5.0), 'infonce')
    """
    match = _ARM.fullmatch(name)
    if match is None or (match["key"] is not None and match["key"] not in SWEEPS):
        forms = ", ".join(f"<method>@{k}<value> ({s.key})" for k, s in SWEEPS.items())
        raise ValueError(
            f"bad bench arm {name!r}: write a method (e.g. grit) or {forms}, the value without "
            "needless zeros, e.g. grit@fn5 or grit@fn0.5"
        )
    if match["key"] is None:
        return Arm(match["method"])
    return Arm(match["method"], match["key"], float(match["value"]))
