"""One declaration per setting: a config field's default, range, choices and description.

A config dataclass declares each field with :func:`setting` (default, bounds, description);
its choices are its annotation (``typing.Literal[...]``). :func:`check_value` enforces type,
choices and range from that single declaration, :func:`derived_kwargs` passes fields declared
``sets=(Cls, name)`` on to a component's own config class ``Cls`` (whose default they take), and
:mod:`hardneg.train.config_reference` renders the declarations as ``docs/config.md``.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Optim:
    ...     lr: float = setting(1e-3, ge=0, doc="peak learning rate")
    >>> (lr,) = dataclasses.fields(Optim)
    >>> check_value(-1.0, float, declared(lr), "optim.lr", 1e-3)
    Traceback (most recent call last):
    ValueError: optim.lr must be ≥ 0, got -1.0; e.g. --set optim.lr=0.001
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar, get_type_hints

from hardneg.train.coerce import coerce, describe

__all__ = [
    "Setting",
    "build",
    "check_settings",
    "check_value",
    "declared",
    "derived_fields",
    "derived_kwargs",
    "setting",
]

T = TypeVar("T")
_KEY = "hardneg.setting"  # the key of a field's metadata holding its Setting


@dataclass(frozen=True)
class Setting:
    """What a config field declares besides its type and default.

    Attributes:
        doc: description, the key's table cell in ``docs/config.md``.
        ge, gt, le, lt: bounds (≥, >, ≤, <); None = unbounded on that side.
        example: the VALUE of the ``--set KEY=VALUE`` fix shown in errors (None: the default).
        sets: ``(config class, field name)`` of the model configuration this field is passed
            on to (see :func:`derived_kwargs`); None when it is read directly.
    """

    doc: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    example: str | None = None
    sets: tuple[type, str] | None = None

    def bounds(self) -> str:
        """The range in words (``"≥ 1"``, ``"in [0, 1)"``), ``""`` when unbounded."""
        low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
        high = ("]", self.le) if self.le is not None else (")", self.lt)
        if low[1] is None and high[1] is None:
            return ""
        if high[1] is None:
            return f"{'≥' if low[0] == '[' else '>'} {low[1]:g}"
        if low[1] is None:
            return f"{'≤' if high[0] == ']' else '<'} {high[1]:g}"
        return f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies in the declared range."""
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )


def setting(
    default: Any = MISSING,
    *,
    doc: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    example: str | None = None,
    factory: Any = MISSING,
    sets: tuple[type, str] | None = None,
) -> Any:
    """A dataclass field carrying its :class:`Setting` (``factory``: a mutable default).

    With ``sets=(Cls, name)`` the default is ``Cls``'s own for ``name`` (no ``default`` may be
    given): the value is declared once, by the class that uses it.
    """
    if sets is not None:
        if default is not MISSING or factory is not MISSING:
            raise TypeError(f"a setting that sets {sets[0].__name__}.{sets[1]} takes its default")
        default = next(f for f in dataclasses.fields(sets[0]) if f.name == sets[1]).default
    meta = {_KEY: Setting(doc, ge, gt, le, lt, example, sets)}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(field: dataclasses.Field) -> Setting | None:
    """The :class:`Setting` of a dataclass ``field`` (None for a field not declared with
    :func:`setting`)."""
    return field.metadata.get(_KEY)


def check_value(value: Any, hint: Any, spec: Setting | None, key: str, default: Any) -> Any:
    """``value`` coerced to ``hint`` (choices of a ``Literal`` included) and inside the range
    of ``spec``, or a one-line ``ValueError`` naming ``key``, the range and a fix."""
    value = coerce(value, hint, key, default)
    if spec is None or value is None or isinstance(value, (str, bool, list, dict)):
        return value
    if not spec.admits(value):
        example = default if spec.example is None else spec.example
        raise ValueError(f"{key} must be {spec.bounds()}, got {value}; e.g. --set {key}={example}")
    return value


def derived_fields(source: type, target: type) -> dict[str, str]:
    """``{target field: source field}`` for the fields of ``source`` declared to set one of
    ``target`` (``setting(sets=(target, name))``)."""
    out = {}
    for field in dataclasses.fields(source):
        spec = declared(field)
        if spec is not None and spec.sets is not None and spec.sets[0] is target:
            out[spec.sets[1]] = field.name
    return out


def derived_kwargs(source: Any, target: type) -> dict[str, Any]:
    """The keyword arguments of ``target`` that the fields of ``source`` set.

    Example:
        >>> from hardneg.models.image import ImageTowerConfig
        >>> from hardneg.train.config import ModelConfig
        >>> derived_kwargs(ModelConfig(image_width=64), ImageTowerConfig)
        {'arch': 'conv', 'width': 64}
    """
    pairs = derived_fields(type(source), target).items()
    return {name: getattr(source, own) for name, own in pairs}


def build(cls: type[T], values: Any, where: str = "") -> T:
    """``cls`` (a config dataclass) from a mapping, every value checked by :func:`check_value`.

    ``where`` is the dotted prefix of the section (``""`` at the top), so that errors name the
    full key (``optim.lr``); an unknown key gets the closest valid one as a suggestion.
    """
    section = where.rstrip(".") or "config"
    if not isinstance(values, dict):
        raise ValueError(
            f"{section} must be a mapping of its keys, got {describe(values)}; set a key inside "
            f"it, e.g. --set {where}{dataclasses.fields(cls)[0].name}=..."
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), sorted(names), n=1)
        hint = f"did you mean {where}{close[0]}? " if close else ""
        raise ValueError(
            f"unknown key(s) {[f'{where}{k}' for k in unknown]} in {section}; {hint}valid "
            f"keys: {sorted(names)}"
        )
    hints, defaults = get_type_hints(cls), cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = build(type(default), value, f"{where}{name}.")
        else:
            spec = declared(fields[name])
            kwargs[name] = check_value(value, hints[name], spec, f"{where}{name}", default)
    return cls(**kwargs)


def check_settings(config: Any, where: str = "") -> None:
    """Check every value of ``config`` (a config dataclass, sections included) against its
    declaration, as :func:`build` does: for a config constructed directly."""
    hints, defaults = get_type_hints(type(config)), type(config)()
    for field in dataclasses.fields(config):
        value, key = getattr(config, field.name), f"{where}{field.name}"
        if dataclasses.is_dataclass(value):
            check_settings(value, f"{key}.")
        else:
            spec = declared(field)
            check_value(value, hints[field.name], spec, key, getattr(defaults, field.name))
