"""The optimizer bugs, each acting at the first step of each optimizer after the load (events.on_first_step),
on local shards (DTensor parameters and state of FSDP2 ZeRO-3 / Megatron-FSDP), in place.

- adam_moments_zeroed: every `exp_avg` / `exp_avg_sq` in the optimizer's state is zeroed before that step.
  Stands for a resume that loads the weights but not the optimizer state, or re-creates the optimizer
  after loading it (Megatron-LM `--no-load-optim`, a state dict keyed by parameter ids that no longer match).
- adam_step_reset: every per-parameter `state[p]["step"]` (and a param group's own "step", as apex and
  Transformer Engine FusedAdam keep it) is set to 0 before that step: the bias correction starts over.
  Stands for a step counter that is not checkpointed or not restored (a hand-rolled Adam, a state dict
  converter that drops "step").
- one_ulp_one_tensor: on rank 0 only, element 0 of the first parameter with a non-empty local shard in
  param group 0 moves one ulp toward +inf before that step. The smallest possible corruption: stands
  for a lossy save/load path (a dtype round trip, a reduction in another order) and measures whether
  the checks are bitwise.
- first_step_skipped: that step's update is thrown away: its parameters and state are snapshotted before
  it and copied back after it. Stands for a resumed step whose update is lost, e.g. a dynamic loss scaler
  whose scale was not restored overflows and skips the step, or an update applied to a copy.
"""

from __future__ import annotations

import copy
import math
import sys

from chaos_plants import events, log

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")

_bug = None
_ulp_done = False
_skipped: dict = {}  # id(optimizer) -> (parameter copies, state copies, group copies)


def _torch():
    return sys.modules["torch"]


def _is_tensor(value) -> bool:
    return isinstance(value, _torch().Tensor)


def _number(value):
    if _is_tensor(value):
        value = value.item() if value.numel() == 1 else float("nan")
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _span(values) -> str:
    values = sorted({_number(v) for v in values}, key=lambda v: (isinstance(v, float) and math.isnan(v), v))
    if not values:
        return "?"
    return str(values[0]) if len(values) == 1 else f"{values[0]}..{values[-1]}"


def zero_moments(optimizer) -> None:
    torch = _torch()
    states = [s for s in optimizer.state.values() if isinstance(s, dict)]
    tensors = [s[name] for s in states for name in ADAM_MOMENTS if _is_tensor(s.get(name))]
    if not tensors:
        if not states or not any(states):
            log.record("idle", why=f"{type(optimizer).__name__}'s state was empty at its first step after the load: "
                                   "nothing was restored, nothing to zero")
        else:
            keys = sorted({key for s in states for key in s})
            log.record("idle", why=f"{type(optimizer).__name__} keeps no Adam moments "
                                   f"(state keys: {', '.join(map(str, keys))})")
        return
    elements = 0
    with torch.no_grad():
        for tensor in tensors:
            shard = events.local(tensor)
            if shard.numel():
                shard.zero_()
                elements += shard.numel()
    step = _span(s["step"] for s in states if "step" in s)
    log.record("acted", what=f"{len(tensors)} Adam moment tensors (exp_avg, exp_avg_sq of {len(states)} parameters, "
                             f"{elements} local elements) zeroed at the first {type(optimizer).__name__} step after "
                             f"the load (the state was restored at step {step})")


def reset_step(optimizer) -> None:
    torch = _torch()
    old, count = [], 0
    with torch.no_grad():
        for state in optimizer.state.values():
            if not isinstance(state, dict) or "step" not in state:
                continue
            value = state["step"]
            old.append(events.local(value).clone() if _is_tensor(value) else value)
            if _is_tensor(value):
                events.local(value).zero_()
            else:
                state["step"] = 0 if isinstance(value, int) else 0.0
            count += 1
    groups, group_old = 0, []
    for group in optimizer.param_groups:
        if "step" in group:
            value = group["step"]
            group_old.append(events.local(value).clone() if _is_tensor(value) else value)
            if _is_tensor(value):
                with torch.no_grad():
                    events.local(value).zero_()
            else:
                group["step"] = 0 if isinstance(value, int) else 0.0
            groups += 1
    if not count and not groups:
        why = ("the state was empty: nothing was restored" if not any(optimizer.state.values())
               else "it keeps no step count")
        log.record("idle", why=f"{type(optimizer).__name__} had no Adam step to reset at its first step "
                               f"after the load ({why})")
        return
    parts = []
    if count:
        parts.append(f"in {count} parameter states (it was {_span(old)})")
    if groups:
        parts.append(f"in {groups} param groups (it was {_span(group_old)})")
    log.record("acted", what=f"{type(optimizer).__name__} step count set to 0 {' and '.join(parts)} before its first step "
                             "after the load: the bias correction starts over")


def one_ulp(optimizer) -> None:
    global _ulp_done
    if _ulp_done:
        return
    rank = log.rank()
    if rank not in (None, 0):
        _ulp_done = True
        return
    torch = _torch()
    if not optimizer.param_groups:
        return
    for index, parameter in enumerate(optimizer.param_groups[0]["params"]):
        shard = events.local(parameter)
        if not shard.numel() or not shard.is_floating_point():
            continue
        _ulp_done = True
        with torch.no_grad():
            position = (0,) * shard.dim()
            old = shard[position].clone()
            new = torch.nextafter(old, torch.full_like(old, math.inf))
            shard[position] = new
        log.record("acted", what=f"parameter {index} of param group 0, element 0: {old.item()!r} -> {new.item()!r} "
                                 f"(one ulp, {str(shard.dtype).replace('torch.', '')})")
        return
    # nothing local in group 0 on this rank: try the next optimizer's first step
    log.record("idle", why=f"{type(optimizer).__name__} has no non-empty local parameter in param group 0 on this rank")


def _copy(value):
    """A copy that survives the step: tensors cloned to host memory (a full copy of a large model's shard on
    the GPU could run it out of memory), anything else deep-copied."""
    if _is_tensor(value):
        return events.local(value).detach().to("cpu", copy=True)
    return copy.deepcopy(value)


def snapshot_step(optimizer) -> None:
    parameters = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            shard = events.local(parameter)
            if shard.numel():
                parameters.append((shard, shard.detach().to("cpu", copy=True)))
    state = {}
    for key, values in optimizer.state.items():
        if isinstance(values, dict):
            state[key] = {name: _copy(value) for name, value in values.items()}
    # of the param groups only the step count moves with a step (apex / TE FusedAdam keep it there)
    groups = [{"step": _copy(group["step"])} if "step" in group else {} for group in optimizer.param_groups]
    _skipped[id(optimizer)] = (parameters, state, groups)


def _put_back(holder: dict, name, saved) -> None:
    current = holder.get(name)
    if _is_tensor(saved) and _is_tensor(current):
        shard = events.local(current)
        if shard.shape == saved.shape:
            shard.copy_(saved)
            return
    holder[name] = saved.clone() if _is_tensor(saved) else saved


def undo_step(optimizer) -> None:
    saved = _skipped.pop(id(optimizer), None)
    if saved is None:
        return
    torch = _torch()
    parameters, state, groups = saved
    with torch.no_grad():
        for shard, copy_ in parameters:
            shard.copy_(copy_)
        restored = 0
        for key in list(optimizer.state.keys()):
            values = optimizer.state[key]
            if key not in state:
                del optimizer.state[key]  # created by the step itself (lazy state): the step never happened
                continue
            for name in list(values.keys()):
                if name not in state[key]:
                    del values[name]
            for name, value in state[key].items():
                _put_back(values, name, value)
                restored += _is_tensor(value)
        for group, saved_group in zip(optimizer.param_groups, groups):
            for name, value in saved_group.items():
                _put_back(group, name, value)
    steps = _span(values["step"] for values in optimizer.state.values() if isinstance(values, dict) and "step" in values)
    log.record("acted", what=f"the first {type(optimizer).__name__} step after the load was undone: {len(parameters)} "
                             f"parameters and {restored} state tensors copied back to their values before it "
                             f"(the step count stays {steps})")


def install(bug: str) -> None:
    global _bug
    _bug = bug
    if bug == "adam_moments_zeroed":
        events.on_first_step(pre=zero_moments)
    elif bug == "adam_step_reset":
        events.on_first_step(pre=reset_step)
    elif bug == "one_ulp_one_tensor":
        events.on_first_step(pre=one_ulp)
    elif bug == "first_step_skipped":
        events.on_first_step(pre=snapshot_step, post=undo_step)
    else:
        raise ValueError(f"not an optimizer bug: {bug}")
