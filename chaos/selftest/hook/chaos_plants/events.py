"""The lifecycle of one rank process, as the bugs see it: load begin, first forward after it, first
optimizer step after that.

- load begin: the first checkpoint load in the process. A load is a call to
  `torch.distributed.checkpoint.load` / `load_state_dict` (both the package's and
  `state_dict_loader`'s attributes are patched; skipped only when its path is known and lies outside
  `$CHAOS_PLANT_CHECKPOINTS`, e.g. a pretrained checkpoint) or to `torch.load` / `torch.serialization.load`
  of a path (or a file object whose name is one) inside `$CHAOS_PLANT_CHECKPOINTS`. Each one is a `load`
  record; the first one arms the process and sets CHAOS_PLANT_ARMED=1 in os.environ, so processes spawned
  afterwards (DataLoader workers under spawn) start armed. A process started with CHAOS_PLANT_ARMED=1 is
  armed from the start but has no load begin of its own (its triggers below never fire).
- first forward after load: a global module forward pre-hook registered at load begin and removed when
  it fires. From then on the process counts as *resumed*: the load is over and training runs.
- first optimizer step after load, per optimizer instance: the first step *after resumed*. Steps taken
  between load begin and the first forward are part of the load, not training: torch's `get_state_dict`
  and Megatron-FSDP's fsdp_dtensor load (`_init_optimizer_states_with_dummy_values`) both run an
  optimizer step with zero gradients to materialize the state the load then overwrites.

Every callback runs guarded: an exception is a `failed` record and the trainer's call goes on unharmed.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import weakref

from chaos_plants import importhook, log

ARMED_ENV = "CHAOS_PLANT_ARMED"

armed = False
load_began = False
resumed = False

_lock = threading.RLock()
_installed = False
_checkpoints: str | None = None
_on_load: list = []  # callback(first: bool), before every counted load
_on_load_begin: list = []  # callback(), once, before the first load runs
_on_forward: list = []  # callback(), once, at the first forward after load begin
_on_step_pre: list = []  # callback(optimizer), once per optimizer: its first step after resumed
_on_step_post: list = []  # callback(optimizer), after that step
_forward_handle = None
_step_handles = None
_loading = threading.local()
_handled_optimizers: "weakref.WeakSet" = weakref.WeakSet()
_in_step: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def guarded(function, where: str | None = None):
    """Runs function; an exception becomes a `failed` record (returns None then)."""

    def run(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            log.failed(error, where=where or getattr(function, "__qualname__", str(function)))
            return None

    return run


def local(tensor):
    """The local shard of a DTensor (FSDP2 ZeRO-3, Megatron-FSDP), else the tensor itself."""
    inner = getattr(tensor, "_local_tensor", None)
    if inner is not None:
        return inner
    to_local = getattr(tensor, "to_local", None)
    if callable(to_local):
        return to_local()
    return tensor


# ---- subscriptions (the chosen bug's module calls these at install) --------------------------------------

def on_load(callback) -> None:
    _on_load.append(callback)


def on_load_begin(callback) -> None:
    _on_load_begin.append(callback)


def on_first_forward(callback) -> None:
    _on_forward.append(callback)


def on_first_step(pre=None, post=None) -> None:
    if pre is not None:
        _on_step_pre.append(pre)
    if post is not None:
        _on_step_post.append(post)


# ---- load detection ----------------------------------------------------------------------------------

def checkpoints_dir() -> str | None:
    global _checkpoints
    if _checkpoints is None:
        directory = os.environ.get("CHAOS_PLANT_CHECKPOINTS")
        if directory:
            _checkpoints = os.path.realpath(directory)
    return _checkpoints


def _as_path(value) -> str | None:
    if isinstance(value, (str, os.PathLike)):
        try:
            path = os.fspath(value)
        except Exception:
            return None
        return path if isinstance(path, str) else None
    return None


def inside_checkpoints(path: str | None) -> bool:
    root = checkpoints_dir()
    if not path or not root or "://" in path:
        return False
    try:
        resolved = os.path.realpath(path)
        return os.path.commonpath([resolved, root]) == root
    except ValueError:
        return False


def _note_load(how: str, path: str | None) -> None:
    """A checkpoint load is about to run in this process."""
    global armed, load_began
    log.load(how, os.path.realpath(path) if path else "")
    first = False
    with _lock:
        if not load_began:
            load_began = first = True
            armed = True
            os.environ[ARMED_ENV] = "1"
    if first:
        _register_hooks()
        for callback in list(_on_load_begin):
            guarded(callback)()
    for callback in list(_on_load):
        guarded(callback)(first)


def _torch_load_wrapper(original):
    @functools.wraps(original)
    def load(f, *args, **kwargs):
        if not getattr(_loading, "depth", 0):
            try:
                path = _as_path(f)
                if path is None:
                    path = _as_path(getattr(f, "name", None))
                if path is not None and inside_checkpoints(path):
                    _note_load("torch.load", path)
            except Exception as error:
                log.failed(error, where="torch.load")
        return original(f, *args, **kwargs)

    load.__chaos_plant_original__ = original
    return load


def _dcp_wrapper(original, how: str):
    @functools.wraps(original)
    def load(*args, **kwargs):
        depth = getattr(_loading, "depth", 0)
        if not depth:
            try:
                path = _as_path(kwargs.get("checkpoint_id"))
                if path is None:
                    reader = kwargs.get("storage_reader")
                    if reader is None and len(args) > 1:
                        # load_state_dict(state_dict, storage_reader); load(state_dict, reader) is the old
                        # order that torch still takes (megatron-core's TorchDistLoadShardedStrategy uses it)
                        reader = args[1]
                    path = _as_path(getattr(reader, "path", None)) if reader is not None else None
                if path is None or inside_checkpoints(path):
                    _note_load(how, path)
            except Exception as error:
                log.failed(error, where=how)
        _loading.depth = depth + 1
        try:
            return original(*args, **kwargs)
        finally:
            _loading.depth = depth

    load.__chaos_plant_original__ = original
    return load


def _patch_torch(torch) -> None:
    import torch.serialization as serialization

    current = serialization.load
    if not hasattr(current, "__chaos_plant_original__"):
        wrapped = _torch_load_wrapper(current)
        serialization.load = wrapped
        if getattr(torch, "load", None) is current:
            torch.load = wrapped
        else:
            torch.load = _torch_load_wrapper(torch.load)


def _patch_dcp(dcp) -> None:
    loader = sys.modules.get("torch.distributed.checkpoint.state_dict_loader")
    for name in ("load", "load_state_dict"):
        how = f"torch.distributed.checkpoint.{name}"
        originals = {}
        for module in (dcp, loader):
            current = getattr(module, name, None) if module is not None else None
            if current is None or hasattr(current, "__chaos_plant_original__"):
                continue
            if current not in originals:
                originals[current] = _dcp_wrapper(current, how)
            setattr(module, name, originals[current])


# ---- forward and optimizer-step triggers -------------------------------------------------------------

def _forward_pre_hook(module, args):
    global _forward_handle, resumed
    with _lock:
        if resumed:
            return None
        resumed = True
        handle, _forward_handle = _forward_handle, None
    if handle is not None:
        handle.remove()
    for callback in list(_on_forward):
        guarded(callback)()
    return None


def _step_pre_hook(optimizer, args, kwargs):
    try:
        if not resumed:
            return None
        depth = _in_step.get(optimizer)
        if depth is not None:  # a nested step() of the same instance (a subclass calling super().step())
            _in_step[optimizer] = depth + 1
            return None
        if optimizer in _handled_optimizers:
            return None
        _handled_optimizers.add(optimizer)
        _in_step[optimizer] = 1
    except Exception as error:
        log.failed(error, where="optimizer step pre-hook")
        return None
    for callback in list(_on_step_pre):
        guarded(callback)(optimizer)
    return None


def _step_post_hook(optimizer, args, kwargs):
    try:
        depth = _in_step.get(optimizer)
        if depth is None:
            return
        if depth > 1:
            _in_step[optimizer] = depth - 1
            return
        del _in_step[optimizer]
    except Exception as error:
        log.failed(error, where="optimizer step post-hook")
        return
    for callback in list(_on_step_post):
        guarded(callback)(optimizer)


def _register_hooks() -> None:
    """At load begin: the forward pre-hook and the optimizer step hooks the chosen bug needs."""
    global _forward_handle, _step_handles
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        from torch.nn.modules.module import register_module_forward_pre_hook

        _forward_handle = register_module_forward_pre_hook(_forward_pre_hook)
    except Exception as error:
        log.failed(error, where="registering the forward pre-hook")
    if (_on_step_pre or _on_step_post) and _step_handles is None:
        try:
            from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

            _step_handles = (register_optimizer_step_pre_hook(_step_pre_hook),
                             register_optimizer_step_post_hook(_step_post_hook))
        except Exception as error:
            log.failed(error, where="registering the optimizer step hooks")


def install() -> None:
    """Load detection (patched when torch and torch.distributed.checkpoint get imported)."""
    global _installed, armed
    if _installed:
        return
    _installed = True
    if os.environ.get(ARMED_ENV) == "1":
        armed = True
    importhook.when_imported("torch", _patch_torch)
    importhook.when_imported("torch.distributed.checkpoint", _patch_dcp)
