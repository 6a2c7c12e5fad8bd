"""A tiny single-process trainer for the planted-bug tests (tests/test_selftest_plants.py): knows nothing
about chaos or the plants, and loads its checkpoints the way real trainers do.

    python plant_target.py train  CKPT_DIR --steps 5 --save-at 2,3 [--megatron] [--workers N --mp spawn]
    python plant_target.py resume CKPT_DIR --steps 2 [--megatron] [--workers N --mp spawn]

--cuda trains on the GPU (dropout draws from the CUDA generator) and keeps, when megatron-core is not
installed, a stand-in for Megatron's TP RNG tracker (`megatron.core.tensor_parallel.random`'s globals)
holding CUDA streams: a Philox state tensor and a CUDA torch.Generator.
--fsdp shards the model with FSDP2 (`fully_shard`, a one-rank gloo group): parameters and Adam state are
DTensors. --megatron also dcp.loads the way megatron-core's TorchDistLoadShardedStrategy does (the storage
reader passed positionally).

train: seeds python / numpy / torch, builds Linear-ReLU-Dropout-Linear, AdamW, a scheduler (LambdaLR, or
megatron-core's OptimizerParamScheduler with --megatron, which also keeps a Megatron TP RNG tracker on CPU
generator states), a nested map-style dataset, trains, and at each --save-at step saves a DCP checkpoint
(iter_%07d: model + optimizer through torch.distributed.checkpoint.state_dict) plus `extra.pt` (RNG,
scheduler; torch.save) and rewrites the tracker.
resume: reads the tracker with pathlib, torch.loads extra.pt, builds the optimizer state with get_state_dict
(an optimizer step with zero gradients, as Megatron-FSDP's load does too), dcp.loads, restores everything,
trains --steps more.

Prints one JSON object: per step the loss, the lr used, the Adam step counts, the exp_avg norm, a param
checksum, the dataset indices read and the draws of every RNG stream; plus the iteration loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.utils.data import DataLoader, Dataset

TRACKER = "latest_checkpointed_iteration.txt"
BATCH = 2


class Samples(Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(7)
        self.x = torch.randn(64, 4, generator=generator)
        self.y = torch.randn(64, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index], torch.tensor(index)


class Wrapped(Dataset):
    """A dataset over a dataset (as Megatron's BlendedDataset over GPTDatasets): one shift, not two."""

    def __init__(self, inner: Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        return self.inner[index]


def device(args) -> str:
    return "cuda" if args.cuda else "cpu"


def tracker_stand_in():
    """What the plants read of megatron.core.tensor_parallel.random, where megatron-core is missing."""
    import types

    class Tracker:
        def __init__(self) -> None:
            self.states_ = {}

        def get_states(self):
            return dict(self.states_)

        def set_states(self, states) -> None:
            self.states_ = dict(states)

    module = types.ModuleType("megatron.core.tensor_parallel.random")
    module._CUDA_RNG_STATE_TRACKER = Tracker()
    module._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    sys.modules[module.__name__] = module
    return module._CUDA_RNG_STATE_TRACKER


def build(args):
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    if args.fsdp:
        import tempfile

        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        rendezvous = Path(tempfile.mkdtemp()) / "rendezvous"
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
    model.to(device(args))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    tracker = None
    if args.cuda and not args.megatron:
        tracker = tracker_stand_in()
        tracker.set_states({"model-parallel-rng": torch.Generator("cuda").manual_seed(11).get_state(),
                            "graph-safe-rng": torch.Generator("cuda").manual_seed(12)})
    if args.megatron:
        import megatron.core.tensor_parallel.random as megatron_random
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=0.01, min_lr=0.001, lr_warmup_steps=4, lr_decay_steps=12,
            lr_decay_style="linear", start_wd=0.01, end_wd=0.01, wd_incr_steps=12, wd_incr_style="constant")
        tracker = megatron_random.get_cuda_rng_tracker()  # created here, on CPU; states set by hand
        tracker.set_states({
            "model-parallel-rng": torch.Generator(device(args)).manual_seed(11).get_state(),
            "graph-safe-rng": torch.Generator(device(args)).manual_seed(12),  # as a graph-safe tracker keeps
        })
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 8)
    return model, optimizer, scheduler, tracker


def loader(args, start: int):
    kwargs = {}
    if args.workers:
        kwargs = {"num_workers": args.workers, "multiprocessing_context": args.mp}
    return DataLoader(Wrapped(Samples()), batch_size=BATCH, sampler=list(range(start, 64)), shuffle=False,
                      generator=torch.Generator().manual_seed(0), **kwargs)


def tracker_draw(args, tracker) -> list[float]:
    if tracker is None:
        return []
    states = dict(tracker.get_states())
    generator = torch.Generator(device(args))
    generator.set_state(states["model-parallel-rng"])
    first = float(torch.rand(1, generator=generator, device=device(args)))
    states["model-parallel-rng"] = generator.get_state()
    graph_safe = states["graph-safe-rng"]
    second = float(torch.rand(1, generator=graph_safe, device=graph_safe.device))  # advances it in place
    tracker.set_states(states)
    return [first, second]


def local(tensor):
    return getattr(tensor, "_local_tensor", tensor)


def checksum(model) -> str:
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(local(parameter).detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def save(args, step, model, optimizer, scheduler, tracker) -> None:
    directory = Path(args.ckpt) / f"iter_{step:07d}"
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))
    extra = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "scheduler": scheduler.state_dict(), "iteration": step}
    if args.cuda:
        extra["cuda"] = torch.cuda.get_rng_state()
    if tracker is not None:
        extra["tracker"] = {name: value.get_state() if isinstance(value, torch.Generator) else value.clone()
                            for name, value in tracker.get_states().items()}
    torch.save(extra, directory / "extra.pt")
    (Path(args.ckpt) / TRACKER).write_text(f"{step}\n")


def resume(args, model, optimizer, scheduler, tracker) -> int:
    iteration = int((Path(args.ckpt) / TRACKER).read_text().strip())
    directory = Path(args.ckpt) / f"iter_{iteration:07d}"
    extra = torch.load(directory / "extra.pt", weights_only=False)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # materializes the Adam state with a zero-grad step
    state = {"model": model_sd, "optim": optim_sd}
    if args.megatron:
        dcp.load(state, dcp.FileSystemReader(str(directory)))
    else:
        dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    scheduler.load_state_dict(extra["scheduler"])
    random.setstate(extra["python"])
    np.random.set_state(extra["numpy"])
    torch.set_rng_state(extra["torch"])
    if args.cuda:
        torch.cuda.set_rng_state(extra["cuda"])
    if tracker is not None:
        restored = {}
        for name, value in extra["tracker"].items():
            if name == "graph-safe-rng":
                generator = torch.Generator(device(args))
                generator.set_state(value)
                value = generator
            restored[name] = value
        tracker.set_states(restored)
    assert extra["iteration"] == iteration
    return iteration


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=("train", "resume"))
    parser.add_argument("ckpt")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--save-at", default="")
    parser.add_argument("--megatron", action="store_true")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--mp", default="fork")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()

    model, optimizer, scheduler, tracker = build(args)
    loaded = resume(args, model, optimizer, scheduler, tracker) if args.phase == "resume" else 0
    saves = {int(s) for s in args.save_at.split(",") if s}
    batches = iter(loader(args, loaded * BATCH))
    steps = []
    for step in range(loaded + 1, loaded + args.steps + 1):
        x, y, index = next(batches)
        x, y = x.to(device(args)), y.to(device(args))
        model.train()
        out = model(x)
        draws = [random.random(), float(np.random.rand()), float(torch.rand(1))]
        if args.cuda:
            draws.append(float(torch.rand(1, device="cuda")))
        draws += tracker_draw(args, tracker)
        loss = ((out - y) ** 2).mean() + 1e-3 * sum(draws)
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.megatron:
            scheduler.step(increment=1)
        else:
            scheduler.step()
        state = [optimizer.state[p] for p in model.parameters()]
        steps.append({
            "step": step, "loss": loss.detach().item(), "lr": lr, "index": [int(i) for i in index],
            "adam_step": sorted({float(local(s["step"])) for s in state}),
            "exp_avg": sum(local(s["exp_avg"]).norm().item() for s in state),
            "params": checksum(model), "draws": draws,
        })
        if step in saves:
            save(args, step, model, optimizer, scheduler, tracker)
    json.dump({"loaded": loaded, "steps": steps}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
