"""rng_not_restored, cuda_rng_not_restored: the resumed run draws from the RNG streams it had before the load.

At load begin every RNG stream is snapshotted: python's `random`, numpy's global state (when numpy is
imported), torch's CPU generator, every CUDA device's default generator (when CUDA is initialized) and
Megatron's TP RNG tracker (`megatron.core.tensor_parallel.random`, when imported and initialized; read
through the module's globals, never `get_cuda_rng_tracker()`, which would create a tracker of its own
choosing). A stream not available at load begin is taken at the next load of the same process. At the
first forward after the load, after the trainer has restored the checkpoint's RNG, every stream is set
back to its snapshot: dropout masks, sampling and any other draw continue from a fresh start, not from
where the uninterrupted run was.

Stands for a resume that does not restore RNG: Megatron-LM's `--no-load-rng`, a trainer that never saves
it, or one that restores it before seeding over it. `cuda_rng_not_restored` touches only the CUDA
generators and the tracker's CUDA streams: a trainer that restores the CPU RNG but forgets the device's
(and the TP tracker's), the classic `torch.set_rng_state` without `torch.cuda.set_rng_state`.
"""

from __future__ import annotations

import random
import sys

from chaos_plants import events, log

_bug = None
_snapshot: dict = {}  # stream -> saved state


def _torch():
    return sys.modules.get("torch")


def _tracker():
    """Megatron's TP RNG tracker, when the trainer created one; None otherwise."""
    module = sys.modules.get("megatron.core.tensor_parallel.random")
    if module is None or not getattr(module, "_CUDA_RNG_STATE_TRACKER_INITIALIZED", False):
        return None
    return getattr(module, "_CUDA_RNG_STATE_TRACKER", None)


def _cuda_initialized(torch) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_initialized())
    except Exception:
        return False


def _is_cuda_state(torch, value) -> bool:
    """A tracker stream kept on the device: a CUDA torch.Generator, or a state tensor that is not the CPU
    generator's (a CUDA Philox state is 16 bytes, the CPU Mersenne Twister's 5056)."""
    if isinstance(value, torch.Generator):
        return value.device.type == "cuda"
    return value.numel() != torch.get_rng_state().numel()


def _take(first: bool) -> None:
    """Snapshots the streams not taken yet (at load begin, and at later loads for late streams)."""
    if events.resumed:  # a load after training resumed (an eval checkpoint, say): the snapshot is done
        return
    torch = _torch()
    everything = _bug == "rng_not_restored"
    if everything and "python" not in _snapshot:
        _snapshot["python"] = random.getstate()
    numpy = sys.modules.get("numpy")
    if everything and numpy is not None and "numpy" not in _snapshot:
        _snapshot["numpy"] = numpy.random.get_state()
    if torch is None:
        return
    if everything and "torch" not in _snapshot:
        _snapshot["torch"] = torch.get_rng_state()
    if "cuda" not in _snapshot and _cuda_initialized(torch):
        _snapshot["cuda"] = [generator.get_state() for generator in torch.cuda.default_generators]
    tracker = _tracker()
    if "tracker" not in _snapshot and tracker is not None:
        states = tracker.get_states()
        if states:
            saved = {}
            for name, value in states.items():
                if not everything and not _is_cuda_state(torch, value):
                    continue
                if isinstance(value, torch.Generator):
                    saved[name] = ("generator", value, value.get_state().clone())
                else:
                    saved[name] = ("tensor", value.clone())
            _snapshot["tracker"] = saved


def _same_numpy(numpy, a, b) -> bool:
    return a[0] == b[0] and numpy.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])


def _tensor_equal(torch, a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu()))


def _set_back() -> None:
    """At the first forward after the load: every snapshotted stream back to its state before the load."""
    torch = _torch()
    if _bug == "cuda_rng_not_restored" and "cuda" not in _snapshot:
        log.record("not_applicable", why="CUDA is not in use in this process")
        return
    changed, same = [], []
    if "python" in _snapshot:
        if random.getstate() != _snapshot["python"]:
            random.setstate(_snapshot["python"])
            changed.append("python")
        else:
            same.append("python")
    numpy = sys.modules.get("numpy")
    if "numpy" in _snapshot and numpy is not None:
        if not _same_numpy(numpy, numpy.random.get_state(), _snapshot["numpy"]):
            numpy.random.set_state(_snapshot["numpy"])
            changed.append("numpy")
        else:
            same.append("numpy")
    if "torch" in _snapshot:
        if not _tensor_equal(torch, torch.get_rng_state(), _snapshot["torch"]):
            torch.set_rng_state(_snapshot["torch"])
            changed.append("torch CPU")
        else:
            same.append("torch CPU")
    if "cuda" in _snapshot:
        count = 0
        for generator, saved in zip(torch.cuda.default_generators, _snapshot["cuda"]):
            # the generator's own set_state: no device switch, so no context is created on other GPUs
            if not _tensor_equal(torch, generator.get_state(), saved):
                generator.set_state(saved)
                count += 1
        (changed if count else same).append(f"CUDA x{count or len(_snapshot['cuda'])}")
    tracker = _tracker()
    if "tracker" in _snapshot and tracker is not None:
        current = dict(tracker.get_states())
        count = 0
        for name, saved in _snapshot["tracker"].items():
            now = current.get(name)
            if saved[0] == "generator":
                generator, state = saved[1], saved[2]
                now_state = now.get_state() if isinstance(now, torch.Generator) else now
                if now is not generator or now_state is None or not _tensor_equal(torch, now_state, state):
                    count += 1
                generator.set_state(state)
                current[name] = generator
            else:
                now_state = now.get_state() if isinstance(now, torch.Generator) else now
                if now_state is None or not _tensor_equal(torch, now_state, saved[1]):
                    count += 1
                current[name] = saved[1].clone()
        if count:
            tracker.set_states(current)
            changed.append(f"tracker ({count} stream{'s' if count != 1 else ''})")
        else:
            same.append(f"tracker ({len(_snapshot['tracker'])} streams)")
    which = "every RNG stream" if _bug == "rng_not_restored" else "every CUDA RNG stream"
    if changed:
        what = f"{which} set back to its state before the load: {', '.join(changed)}"
        if same:
            what += f" (already equal, untouched: {', '.join(same)})"
        log.record("acted", what=what)
    else:
        log.record("idle", why=f"{which} already equals its state before the load ({', '.join(same) or 'none taken'})")


def install(bug: str) -> None:
    global _bug
    _bug = bug
    events.on_load(_take)
    events.on_first_forward(_set_back)
