"""Type-check and coerce one config value from its dataclass annotation (``--set``, YAML).

The configs of :mod:`hardneg.train.config` are built through :func:`coerce`, so a value of the
wrong type, or outside the choices of a ``Literal``, fails with a one-line ``ValueError`` naming
the dotted key and an example, before anything is built (declared ranges:
:mod:`hardneg.train.settings`; combinations: :mod:`hardneg.train.validate`).
"""

from __future__ import annotations

import math
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

__all__ = ["coerce", "describe"]


def _example(key: str, default: Any, hint: Any) -> str:
    """``--set KEY=VALUE`` with the field's default (or a placeholder of its type) as VALUE."""
    if isinstance(default, bool):
        value = str(default).lower()
    elif default is None or default == [] or default == {}:
        inner = _inner(hint)
        placeholders = {int: "1", float: "0.5", str: "NAME", list: "[a,b]", dict: "{name: 1}"}
        value = placeholders.get(get_origin(inner) or inner, "null")
    else:
        value = str(default)
    return f"--set {key}={value}"


def _inner(hint: Any) -> Any:
    """``X`` of ``X | None``; ``hint`` itself otherwise."""
    args = [a for a in get_args(hint) if a is not type(None)]
    return args[0] if get_origin(hint) in (Union, UnionType) and len(args) == 1 else hint


def describe(value: Any) -> str:
    """``value`` and its type for an error message: ``'fast' (str)``."""
    return f"{value!r} ({type(value).__name__})"


def coerce(value: Any, hint: Any, key: str, default: Any) -> Any:
    """``value`` as the annotated type ``hint`` of field ``key``, or a ``ValueError``.

    int: an int (not a bool; no float, no string: YAML and ``--set`` give ints). float: an int
    or float, or a string that parses as one (PyYAML reads ``3e-4`` as a string: YAML 1.1 wants
    a dot), finite. bool: a bool (YAML's true/false/yes/no). str: a string. ``Literal[...]``:
    one of its values. ``X | None``: null or X. ``list[X]``: a list, each item an X.
    ``dict[str, Any]``: a mapping with string keys.

    Args:
        value: the parsed value (YAML file or ``--set``).
        hint: the field's evaluated annotation (``typing.get_type_hints``).
        key: the dotted key named in errors (``optim.lr``).
        default: the field's default, the value of the example in errors.

    Example:
        >>> coerce("3e-4", float, "optim.lr", 1e-3)
        0.0003
        >>> coerce("fast", float, "optim.lr", 1e-3)
        Traceback (most recent call last):
        ValueError: optim.lr must be a float, got 'fast' (str); e.g. --set optim.lr=0.001
        >>> coerce("adam", Literal["adamw", "sgd"], "optim.name", "adamw")
        Traceback (most recent call last):
        ValueError: optim.name='adam' is unknown; choose one of ['adamw', 'sgd']
    """
    inner = _inner(hint)
    if inner is not hint:
        return None if value is None else coerce(value, inner, key, default)
    fix = f"e.g. {_example(key, default, hint)}"
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {describe(value)}; {fix}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be an integer, got {describe(value)}; {fix}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            what = "a finite number" if number is not None else "a float"
            raise ValueError(f"{key} must be {what}, got {describe(value)}; {fix}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} must be a string, got {describe(value)}; {fix} (quote numbers)")
    if get_origin(hint) is Literal:
        if isinstance(value, str) and value in get_args(hint):
            return value
        raise ValueError(f"{key}={value!r} is unknown; choose one of {list(get_args(hint))}")
    if get_origin(hint) is list:
        if isinstance(value, list):
            (item,) = get_args(hint)
            return [coerce(v, item, f"{key}[{i}]", None) for i, v in enumerate(value)]
        raise ValueError(f"{key} must be a list, got {describe(value)}; {fix}")
    if get_origin(hint) is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise ValueError(f"{key} must be a mapping, got {describe(value)}; {fix}")
    raise TypeError(f"{key}: no coercion for the annotation {hint!r}")  # a new field's type
