"""What a gpt3 rank imports before it works, in one place: the cold rank (`__main__`) and the warm spare
(`WARM_IMPORTS`) import this module, so both arrive at the same interpreter state.

megatron-core wraps its fused kernels in `torch.compile` when its modules are imported, and that imports
torch's compiler (dynamo and inductor): measured here, a rank's imports take 5.7 CPU-seconds with it and
3.5 without.
The CPU trainer calls none of those kernels (no fusion is enabled; torch's compile cache stays empty), so
with `CHAOS_MEGATRON_COMPILE=off` (the workload sets it on CPU) megatron-core is imported with
`torch.compile` as the identity and its `jit_fuser` disabled. On GPU nothing changes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed.checkpoint  # noqa: F401

from chaos.workloads.gpt3.workload import ENV_MEGATRON_COMPILE

MEGATRON_MODULES = (
    "megatron.core",
    "megatron.core.parallel_state",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.transformer.transformer_config",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.datasets.gpt_dataset",
    "megatron.core.datasets.blended_megatron_dataset_builder",
)


def _identity_compile(model=None, **_options):
    return (lambda function: function) if model is None else model


def import_megatron(compile_fused: bool) -> None:
    import importlib

    real_compile = torch.compile
    try:
        if not compile_fused:
            torch.compile = _identity_compile
            import megatron.core.jit

            megatron.core.jit.disable_jit_fuser()  # modules imported later decorate with the no-op too
        for name in MEGATRON_MODULES:
            importlib.import_module(name)
    finally:
        torch.compile = real_compile


import_megatron(compile_fused=os.environ.get(ENV_MEGATRON_COMPILE) != "off")

import chaos.workloads.gpt3.train  # noqa: E402,F401
