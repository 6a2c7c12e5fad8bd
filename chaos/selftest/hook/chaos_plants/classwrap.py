"""Wrap methods across a class tree: the ones each class defines in its own `__dict__`, in the classes that
exist now (walked through `__subclasses__()`) and in every subclass defined later (through an
`__init_subclass__` set on the base, which chains to the one it replaces)."""

from __future__ import annotations

import functools

from chaos_plants import log

MARK = "__chaos_plant_wrapped__"


def _wrap_class(cls, names, make, skip) -> None:
    if skip is not None and skip(cls):
        return
    for name in names:
        function = cls.__dict__.get(name)
        if function is None or not callable(function) or getattr(function, MARK, False):
            continue
        try:
            wrapped = functools.wraps(function)(make(cls, name, function))
            setattr(wrapped, MARK, True)
            wrapped.__chaos_plant_original__ = function
            setattr(cls, name, wrapped)
        except Exception as error:  # a class that refuses attributes (a C extension type) stays as it is
            log.failed(error, where=f"wrapping {cls.__qualname__}.{name}")


def _walk(cls, seen):
    for sub in cls.__subclasses__():
        if sub not in seen:
            seen.add(sub)
            yield sub
            yield from _walk(sub, seen)


def wrap_tree(base, names, make, include_base: bool = True, skip=None) -> None:
    """make(cls, name, function) -> the replacement for `cls.<name>`; skip(cls) -> True leaves cls alone."""
    if include_base:
        _wrap_class(base, names, make, skip)
    for sub in list(_walk(base, {base})):
        _wrap_class(sub, names, make, skip)

    previous = base.__dict__.get("__init_subclass__")

    def __init_subclass__(cls, **kwargs):
        if previous is not None:
            previous.__get__(None, cls)(**kwargs)
        else:
            super(base, cls).__init_subclass__(**kwargs)
        try:
            _wrap_class(cls, names, make, skip)
        except Exception as error:
            log.failed(error, where=f"wrapping the new subclass {cls.__qualname__}")

    base.__init_subclass__ = classmethod(__init_subclass__)
