"""Post-import hooks: run a callback right after a watched module has executed, without importing it.

`when_imported(name, callback)` calls `callback(module)` at once when the module is already in
sys.modules, else the first time it is imported: a `sys.meta_path` finder answers only for the watched
names, asks the other finders for the real spec and wraps its loader so the callback runs right after
`exec_module`. The module keeps its real loader (`__loader__` and `__spec__.loader` are put back before
it executes), so nothing downstream sees the wrapper.
"""

from __future__ import annotations

import os
import sys
import threading

from chaos_plants import log

_lock = threading.RLock()
_callbacks: dict[str, list] = {}
_finder = None


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run(name: str, module) -> None:
    with _lock:
        callbacks = _callbacks.pop(name, [])
    for callback in callbacks:
        try:
            callback(module)
        except Exception as error:  # a patch that breaks must not break the trainer's import
            log.failed(error, where=f"after import of {name}")
    if not _callbacks:
        _remove_finder()


class _Loader:
    """The real loader, plus the callbacks after exec_module."""

    def __init__(self, loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module) -> None:
        spec = getattr(module, "__spec__", None)
        try:
            if spec is not None and spec.loader is self:
                spec.loader = self._loader
            if getattr(module, "__loader__", None) is self:
                module.__loader__ = self._loader
        except Exception:
            pass
        self._loader.exec_module(module)
        _run(self._name, sys.modules.get(self._name, module))


class _Finder:
    def __init__(self) -> None:
        self._finding = threading.local()

    def find_spec(self, name, path=None, target=None):
        if name not in _callbacks or name in sys.modules:
            return None
        busy = getattr(self._finding, "names", None)
        if busy is None:
            busy = self._finding.names = set()
        if name in busy:
            return None
        busy.add(name)
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec  # nothing to wrap (not found, a namespace package, a legacy loader)
            spec.loader = _Loader(spec.loader, name)
            return spec
        finally:
            busy.discard(name)

    def invalidate_caches(self) -> None:
        pass


def _remove_finder() -> None:
    global _finder
    with _lock:
        if _finder is not None and not _callbacks:
            try:
                sys.meta_path.remove(_finder)
            except ValueError:
                pass
            _finder = None


def when_imported(name: str, callback) -> None:
    global _finder
    module = sys.modules.get(name)
    if module is not None:
        try:
            callback(module)
        except Exception as error:
            log.failed(error, where=f"patching {name}")
        return
    with _lock:
        _callbacks.setdefault(name, []).append(callback)
        if _finder is None:
            _finder = _Finder()
            sys.meta_path.insert(0, _finder)
