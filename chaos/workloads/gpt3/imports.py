"""What a gpt3 rank imports before it works, in one place: the cold rank (`__main__`) and the warm spare
(`WARM_IMPORTS`) import this module, so both arrive at the same interpreter state.

megatron-core wraps its fused kernels in `torch.compile` when its modules are imported, and that imports
torch's compiler backend (inductor). The CPU trainer calls none of those kernels (no fusion is enabled;
torch's compile cache stays empty), so with `CHAOS_MEGATRON_COMPILE=off` (the workload sets it on CPU) megatron-core is imported with
`torch.compile` as the identity and its `jit_fuser` disabled. On GPU nothing changes.

torch's compiler frontend (dynamo) is imported whatever we do: torch imports it on the first call of any
function it marks `_disable_dynamo` (FSDP2's sharding, the optimizer's zero_grad). It is imported here, so
that a restart's breakdown calls it imports (not model building) and a spare pays for it before its order.

The cyclic garbage collector is off while importing: the imports allocate a few hundred thousand objects
and create no garbage worth collecting, and the collections they trigger cost 0.5 of a rank's 4.2
CPU-seconds of imports (measured here; 5.6 with inductor).
"""

from __future__ import annotations

import gc
import os

gc.disable()

import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401
import torch.distributed.checkpoint  # noqa: E402,F401

from chaos.workloads.gpt3.workload import ENV_MEGATRON_COMPILE  # noqa: E402

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

gc.enable()
