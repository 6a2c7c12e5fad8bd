"""Typed reading of untrusted configuration (a scenario, a workload config): plain data from YAML in, typed
values out, and on anything wrong an InputError naming the file, the field path and what was expected.

Two layers, one set of messages:
- FieldReader: primitives bound to a source file and a field prefix (mapping with allowed keys and
  did-you-mean, integer and number with bounds, string, boolean, choice(s), lists). Hand-written readers use it.
- read_dataclass: a mapping read into a dataclass, each field by its type (int, float, str, bool, Literal,
  `X | None`, `tuple[X, ...]`) and, through setting(), its doc and range; a key that is no field is an error
  with a did-you-mean. Checks between fields stay with the dataclass.

```python
@dataclass(frozen=True)
class Config:
    lr: float = setting(1e-3, "Peak learning rate.", above=0.0)
    nodes: int = setting(1, "Hosts.", low=1, outside=AT_LEAST_ONE)

config = read_dataclass(Config, raw, FieldReader("s.yaml", "workload"))
```
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Literal, Mapping, TypeVar

from chaos.errors import InputError, did_you_mean, show

T = TypeVar("T")

AT_LEAST_ONE = "must be >= 1, got {value}"
"""The message of a count that must be positive (an `outside` template)."""


def join(where: str, key: str) -> str:
    """A field path one level down: join("faults[0]", "at") -> "faults[0].at"; join("", "seed") -> "seed"."""
    return f"{where}.{key}" if where else key


def _number_text(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(low: float | None = None, high: float | None = None, reason: str = "", *,
            above: float | None = None, below: float | None = None) -> str:
    """' in [1, 8]', ' >= 0', ' > 0', ' in [0, 1)', ... with ' (reason)' after; '' when unbounded."""
    start = (low, "[") if low is not None else (above, "(") if above is not None else None
    end = (high, "]") if high is not None else (below, ")") if below is not None else None
    if start and end:
        text = f" in {start[1]}{_number_text(start[0])}, {_number_text(end[0])}{end[1]}"
    elif start:
        text = f" {'>=' if low is not None else '>'} {_number_text(start[0])}"
    elif end:
        text = f" {'<=' if high is not None else '<'} {_number_text(end[0])}"
    else:
        text = ""
    return f"{text} ({reason})" if reason and text else text


# ---- the primitives ------------------------------------------------------------------------------------
class FieldReader:
    """Reads typed values out of plain data, raising InputError with the field path on anything wrong.
    `where` arguments are paths below `prefix` (the section this reader was given: "workload", or "")."""

    def __init__(self, source: str, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix

    def field(self, where: str) -> str:
        """The full field path an error names ("" is the prefix itself)."""
        return join(self.prefix, where) if where else self.prefix

    def error(self, where: str, message: str) -> InputError:
        return InputError(self.source, self.field(where), message)

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...] | list[str], noun: str = "key") -> dict:
        """A mapping whose keys are all in `allowed` (an unknown one is named, with a close spelling)."""
        if not isinstance(value, Mapping):
            raise self.error(where, f"expected a mapping with keys from {list(allowed)}, got {show(value)}")
        for key in value:
            if key not in allowed:
                raise InputError(self.source, join(self.field(where), str(key)),
                                 f"unknown {noun}{did_you_mean(key, allowed)}; expected one of {list(allowed)}")
        return dict(value)

    def integer(self, value: Any, where: str, low: int | None = None, high: int | None = None,
                high_reason: str = "", outside: str = "") -> int:
        """An int (not a bool) in [low, high]. `outside`: the message for an integer out of range instead of
        'expected an integer in [low, high], got N' ({value} is the value)."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer{_bounds(low, high, high_reason)}, got {show(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            message = outside or f"expected an integer{_bounds(low, high, high_reason)}, got {{value}}"
            raise self.error(where, message.format(value=value))
        return value

    def number(self, value: Any, where: str, low: float | None = 0.0, strict: bool = False) -> float:
        """A finite int or float >= low (> low when strict), as a float. low=None: any number, infinities and
        NaN included (for a caller that checks the range itself)."""
        if low is None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.error(where, f"expected a number, got {show(value)}")
            return float(value)
        bounds = _bounds(above=float(low)) if strict else _bounds(float(low))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(where, f"expected a finite number{bounds}, got {show(value)}")
        if value < low or (strict and value == low):
            raise self.error(where, f"expected a number{bounds}, got {show(value)}")
        return float(value)

    def string(self, value: Any, where: str, non_empty: bool = False) -> str:
        """A string; with non_empty, one with something besides whitespace."""
        if non_empty and (not isinstance(value, str) or not value.strip()):
            raise self.error(where, f"expected a non-empty string, got {show(value)}")
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {show(value)}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"expected true or false, got {show(value)}")
        return value

    def choice(self, value: Any, where: str, choices: tuple[str, ...], what: str = "") -> str:
        """One of `choices`; `what` replaces 'one of' in the message."""
        if not isinstance(value, str) or value not in choices:
            raise self.error(where, f"expected {what or 'one of'} {list(choices)}, got {show(value)}"
                                    f"{did_you_mean(value, choices)}")
        return value

    def choices(self, value: Any, where: str, choices: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty list of `choices` (a single one needs no list), repeats dropped, in the given order."""
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise self.error(where, f"expected a non-empty list of {list(choices)}, got {show(value)}")
        picked = tuple(self.choice(item, f"{where}[{i}]", choices) for i, item in enumerate(items))
        return tuple(dict.fromkeys(picked))

    def items(self, value: Any, where: str, read_item: Callable[[Any, str], T]) -> list[T]:
        """A list (a single string counts as a list of one), each item read by read_item(item, where[i])."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise self.error(where, f"expected a list, got {show(value)}")
        return [read_item(item, f"{where}[{i}]") for i, item in enumerate(value)]


# ---- dataclasses -------------------------------------------------------------------------------------
FieldRead = Callable[[FieldReader, Any, str], Any]
"""A field's own reader: (reader, raw value, field path) -> the value."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a dataclass field says about itself (setting() puts it in the field's metadata)."""

    doc: str = ""
    low: float | None = None
    """value >= low"""
    high: float | None = None
    """value <= high"""
    above: float | None = None
    """value > above"""
    below: float | None = None
    """value < below"""
    reason: str = ""
    """Why the range is what it is, quoted in the message."""
    outside: str = ""
    """The message for a value out of range ({value} is the value); default 'expected an integer in [1, 8],
    got 9' or 'expected a finite number > 0, got 0.0'."""
    read: FieldRead | None = None
    """Reads the value instead of its type (a field with a spelling of its own, e.g. `auto` for None)."""

    def check(self, read: FieldReader, value: Any, where: str) -> None:
        """Raises when a number is out of this range (a float must also be finite); None passes."""
        bounded = (self.low, self.high, self.above, self.below) != (None, None, None, None)
        if not bounded or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return
        inside = ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                  and (self.above is None or value > self.above) and (self.below is None or value < self.below))
        if inside and (isinstance(value, int) or math.isfinite(value)):
            return
        bounds = _bounds(self.low, self.high, self.reason, above=self.above, below=self.below)
        what = "an integer" if isinstance(value, int) else "a finite number"
        raise read.error(where, (self.outside or f"expected {what}{bounds}, got {{value}}").format(value=value))


_METADATA_KEY = "chaos.config_fields"


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, low: float | None = None,
            high: float | None = None, above: float | None = None, below: float | None = None, reason: str = "",
            outside: str = "", read: FieldRead | None = None) -> Any:
    """A dataclass field that carries its doc and range (see Setting): `lr: float = setting(1e-3, "...",
    above=0.0)`."""
    spec = Setting(doc=doc, low=low, high=high, above=above, below=below, reason=reason, outside=outside, read=read)
    return dataclasses.field(default=default, metadata={_METADATA_KEY: spec})


def setting_of(field: dataclasses.Field) -> Setting:
    """The field's Setting (an empty one for a plain field)."""
    return field.metadata.get(_METADATA_KEY) or Setting()


def read_dataclass(cls: type[T], value: Any, read: FieldReader, where: str = "", *,
                   base: Mapping[str, Any] | None = None, readers: Mapping[str, FieldRead] | None = None,
                   noun: str = "field") -> T:
    """cls built from the mapping `value`: every key must be a field (else 'unknown field (did you mean
    ...?)'), each given value is read by its field's reader or type and checked against its range, in the
    order the fields are declared. Fields not given take `base`'s value, else their default. `readers`
    name readers for fields of a dataclass defined elsewhere (without setting())."""
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    raw = read.mapping(value, where, [f.name for f in fields], noun=noun)
    readers = readers or {}
    hints: dict[str, Any] | None = None
    values = dict(base or {})
    for f in fields:
        if f.name not in raw:
            continue
        spec, path = setting_of(f), join(where, f.name)
        reader = readers.get(f.name) or spec.read
        if reader is not None:
            values[f.name] = reader(read, raw[f.name], path)
        else:
            hints = hints if hints is not None else typing.get_type_hints(cls)
            values[f.name] = _read_typed(read, raw[f.name], hints[f.name], path)
        spec.check(read, values[f.name], path)
    return cls(**values)


def _read_typed(read: FieldReader, value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _read_typed(read, value, next(a for a in args if a is not type(None)), where)
    if origin is Literal:
        return read.choice(value, where, args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple(read.items(value, where, lambda item, at: _read_typed(read, item, args[0], at)))
    if hint is bool:
        return read.boolean(value, where)
    if hint is int:
        return read.integer(value, where)
    if hint is float:
        return read.number(value, where, low=None)
    if hint is str:
        return read.string(value, where)
    raise TypeError(f"read_dataclass reads no field of type {hint!r} ({where}); give it a reader")
