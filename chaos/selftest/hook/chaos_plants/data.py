"""data_shifted_one_sample: once the process is armed, every sample the map-style datasets hand out is the
next one: index i reads i+1 (modulo the dataset's length).

The `__getitem__` (and batched `__getitems__`) that each `torch.utils.data.Dataset` subclass defines is
wrapped, in the subclasses that exist and in those defined later. Only the outermost call of a thread
shifts (a BlendedDataset asking a GPTDataset, a Subset asking its dataset: one shift), only for an
int-like index (an int or a numpy integer; not a bool, a slice or a tensor). DataLoader workers forked
after arming inherit it; spawned ones start armed through CHAOS_PLANT_ARMED.

Stands for a resume that restores the data position off by one: a consumed-samples counter saved before
the last batch was counted (or after), a sampler offset that counts from 1, a skip of one batch too many.
"""

from __future__ import annotations

import operator
import sys
import threading

from chaos_plants import classwrap, events, log

_depth = threading.local()
_acted = False


def _int_like(index) -> bool:
    if isinstance(index, bool):
        return False
    if isinstance(index, int):
        return True
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(index, numpy.integer) and not isinstance(index, numpy.bool_)


def _shift(dataset, index):
    new = operator.index(index) + 1
    try:
        length = len(dataset)
    except Exception:
        length = None
    if length:
        new %= length
    return type(index)(new) if not isinstance(index, int) else new


def _said(index, new) -> None:
    global _acted
    if not _acted:
        _acted = True
        log.record("acted", what=f"dataset index {int(index)} read as {int(new)}: "
                                 "every sample after the load is the next one")


def _shifted_one(dataset, index):
    if not _int_like(index):
        return index
    new = _shift(dataset, index)
    _said(index, new)
    return new


def _shifted_many(dataset, indices):
    if not (isinstance(indices, (list, tuple)) and indices and all(_int_like(i) for i in indices)):
        return indices
    new = type(indices)(_shift(dataset, i) for i in indices)
    _said(indices[0], new[0])
    return new


def _make(cls, name, function):
    """`__getitem__(index)` or `__getitems__(indices)` reading the shifted index (indices) when it is the
    outermost dataset call of the thread in an armed process."""
    shifted = _shifted_many if name == "__getitems__" else _shifted_one

    def wrapper(self, index, *args, **kwargs):
        depth = getattr(_depth, "value", 0)
        if depth or not events.armed:  # an inner dataset of the one that shifted, or not armed yet
            return function(self, index, *args, **kwargs)
        try:
            index = shifted(self, index)
        except Exception as error:
            log.failed(error, where=f"{cls.__qualname__}.{name}")
        _depth.value = depth + 1
        try:
            return function(self, index, *args, **kwargs)
        finally:
            _depth.value = depth

    wrapper.__name__ = wrapper.__qualname__ = name
    return wrapper


def _patch(torch) -> None:
    from torch.utils.data import Dataset, IterableDataset

    def skip(cls) -> bool:
        return cls is Dataset or issubclass(cls, IterableDataset)

    classwrap.wrap_tree(Dataset, ("__getitem__", "__getitems__"), _make, include_base=False, skip=skip)


def install(bug: str) -> None:
    from chaos_plants import importhook

    importhook.when_imported("torch", _patch)
