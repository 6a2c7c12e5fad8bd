"""scheduler_one_step_behind: the first learning-rate scheduler step after the first optimizer step after the
load does not happen, so from then on every learning rate is the one of the step before.

`step` is wrapped in `torch.optim.lr_scheduler.LRScheduler` and every subclass that defines its own (now
and later), and in megatron-core's `OptimizerParamScheduler` (and its subclasses). Only an outermost call
counts (SequentialLR / ChainedScheduler stepping their children is one step), and calls made inside a
scheduler's `__init__` or `load_state_dict` never count: `OptimizerParamScheduler.__init__` calls
`self.step(0)`, its `load_state_dict` calls `self.step(increment=num_steps)`, `LRScheduler.__init__`
takes an initial step.

Stands for a scheduler restored one step short: its counter saved before (or restored without) the
last increment, `last_epoch` off by one, a scheduler re-created and fast-forwarded one step too few.
"""

from __future__ import annotations

import threading

from chaos_plants import classwrap, events, importhook, log

_tls = threading.local()
_armed_for_skip = False
_done = False


def _after_first_step(optimizer) -> None:
    global _armed_for_skip
    _armed_for_skip = True


def _describe(scheduler, args, kwargs) -> str:
    name = type(scheduler).__name__
    if hasattr(scheduler, "num_steps"):  # megatron-core OptimizerParamScheduler
        increment = kwargs.get("increment", args[0] if args else None)
        return (f"{name}.step(increment={increment}) skipped: num_steps stays {scheduler.num_steps}, "
                f"the learning-rate schedule runs one step behind")
    shown = ", ".join([repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()])
    return (f"{name}.step({shown}) skipped (an increment of one step): last_epoch stays "
            f"{getattr(scheduler, 'last_epoch', '?')}, the learning-rate schedule runs one step behind")


def _call_counted(counter: str, function, *args, **kwargs):
    """Runs function with the thread's `counter` depth raised by one (nested scheduler calls see it)."""
    depth = getattr(_tls, counter, 0)
    setattr(_tls, counter, depth + 1)
    try:
        return function(*args, **kwargs)
    finally:
        setattr(_tls, counter, depth)


def _make(cls, name, function):
    if name == "step":
        def step(self, *args, **kwargs):
            global _done
            outermost = not getattr(_tls, "internal", 0) and not getattr(_tls, "step", 0)
            if _armed_for_skip and not _done and outermost:
                _done = True
                try:
                    log.record("acted", what=_describe(self, args, kwargs))
                except Exception as error:
                    log.failed(error, where=f"{cls.__qualname__}.step")
                return None
            return _call_counted("step", function, self, *args, **kwargs)

        return step

    def internal(self, *args, **kwargs):  # __init__ / load_state_dict: their own step() calls do not count
        return _call_counted("internal", function, self, *args, **kwargs)

    return internal


_METHODS = ("step", "__init__", "load_state_dict")


def _patch_torch(module) -> None:
    base = getattr(module, "LRScheduler", None) or getattr(module, "_LRScheduler")
    classwrap.wrap_tree(base, _METHODS, _make)


def _patch_megatron(module) -> None:
    classwrap.wrap_tree(module.OptimizerParamScheduler, _METHODS, _make)


def install(bug: str) -> None:
    events.on_first_step(post=_after_first_step)
    importhook.when_imported("torch.optim.lr_scheduler", _patch_torch)
    importhook.when_imported("megatron.core.optimizer_param_scheduler", _patch_megatron)
