"""The model: megatron-core GPTModel (local or transformer-engine layer spec), tensor parallel through
parallel_state, ZeRO-3 over data parallel with torch FSDP2 `fully_shard` (parameters, gradients and
optimizer state become DTensors sharded on the "dp" mesh dimension)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.parallel import ParallelDims


@dataclass(frozen=True)
class TPLayout:
    """How a parameter is split across tensor-parallel ranks (None: replicated on every TP rank).

    Read from megatron's parameter attributes before FSDP replaces the parameters (the DTensor parameters
    it creates do not carry them)."""

    partition_dim: int | None


def layer_spec(config: GPT3Config):
    from megatron.core.models.gpt import gpt_layer_specs

    if config.transformer_impl == "local":
        return gpt_layer_specs.get_gpt_layer_local_spec()
    try:
        import transformer_engine  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "transformer_impl: transformer_engine needs transformer-engine installed "
            "(pip install 'chaos[gpu]'; megatron-core 0.16.1 wants transformer-engine>=2.9,<2.12): " + str(error)
        ) from error
    return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()


def transformer_config(config: GPT3Config):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        tensor_model_parallel_size=config.tensor_parallel,
        hidden_dropout=config.hidden_dropout,
        attention_dropout=config.attention_dropout,
        use_cpu_initialization=config.device == "cpu",
        # main parameters stay fp32 (upstream: --megatron-fsdp-main-params-dtype fp32); FSDP casts for compute
        params_dtype=torch.float32,
        bf16=config.bf16,
        pipeline_dtype=torch.bfloat16 if config.bf16 else torch.float32,
        attention_softmax_in_fp32=True,
        deterministic_mode=config.deterministic and config.device == "cuda",
        gradient_accumulation_fusion=False,
        calculate_per_token_loss=True,
    )


def plain_name(name: str) -> str:
    """A parameter's name in the bare GPTModel: wrappers (Float16Module, Megatron-FSDP) each add `module.`."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def build(config: GPT3Config, dims: ParallelDims) -> tuple[nn.Module, dict[str, TPLayout]]:
    from megatron.core.models.gpt.gpt_model import GPTModel

    megatron_config = transformer_config(config)
    model = GPTModel(
        config=megatron_config,
        transformer_layer_spec=layer_spec(config),
        vocab_size=config.padded_vocab_size,
        max_sequence_length=config.seq_length,
        position_embedding_type="learned_absolute",
    )
    model.to(dims.device)
    layouts = {
        name: TPLayout(param.partition_dim if getattr(param, "tensor_model_parallel", False) else None)
        for name, param in model.named_parameters()
    }
    if config.fsdp == "torch":
        shard_with_fsdp2(model, dims, config)
    elif config.bf16:
        # Megatron-FSDP (0.16.1) has no cast policy: it computes in the dtype of the module's parameters.
        # As Megatron-LM's get_model does, Float16Module holds bf16 compute weights and casts the inputs;
        # Megatron-FSDP then keeps fp32 main weights and fp32 gradients (preserve_fp32_weights,
        # grad_reduce_in_fp32), like upstream's --megatron-fsdp-main-params-dtype fp32.
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(megatron_config, model)
    return model, layouts


def build_optimizer(model: nn.Module, config: GPT3Config, dims: ParallelDims) -> tuple[nn.Module, torch.optim.Optimizer]:
    """AdamW over the ZeRO-3 shards. With Megatron-FSDP the model and optimizer are wrapped together
    (its fully_shard swaps in DTensor parameters and extends step/zero_grad)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps, weight_decay=config.weight_decay,
        # On CPU the per-tensor AdamW takes its square root from MKL's vector math, which is not correctly
        # rounded and differs between CPUs whatever MKL_CBWR says (measured: AMD EPYC vs Intel Xeon); the
        # fused kernel uses the exact IEEE square root, so a CPU golden holds on any x86-64 CPU.
        fused=True if config.device == "cpu" else None,
    )
    if config.fsdp == "megatron":
        return shard_with_megatron_fsdp(model, optimizer, dims)
    return model, optimizer


def shard_with_megatron_fsdp(model: nn.Module, optimizer, dims: ParallelDims):
    """Megatron-FSDP, data_parallel_sharding_strategy optim_grads_params (ZeRO-3), fp32 main params
    and grads as upstream (--megatron-fsdp-main-params-dtype fp32, -main-grads-dtype fp32). CUDA only."""
    from megatron.core.distributed.fsdp.src.megatron_fsdp.fully_shard import fully_shard
    from megatron.core.transformer.transformer_layer import TransformerLayer

    # Megatron-FSDP wants its mesh dimensions in rank order ("dp" outer, "tp" inner): the same ranks as
    # dims.mesh, named the other way round.
    from torch.distributed.device_mesh import DeviceMesh

    layout = torch.arange(dims.world_size).reshape(dims.dp, dims.tp)
    mesh = DeviceMesh(dims.device.type, layout, mesh_dim_names=("dp", "tp"))
    return fully_shard(
        model, optimizer, device_mesh=mesh, dp_shard_dim="dp", tp_dim="tp",
        fsdp_unit_modules=[TransformerLayer], zero_dp_strategy=megatron_zero_strategy(dims.dp), device=dims.device,
        grad_reduce_in_fp32=True, preserve_fp32_weights=True, overlap_grad_reduce=False,
        overlap_param_gather=False, calculate_per_token_loss=True, check_for_nan_in_grad=False,
    )


def megatron_zero_strategy(dp: int) -> str:
    """ZeRO-3 (`optim_grads_params`) over dp; with one dp rank there is nothing to shard: `no_shard`.

    Not only a shortcut: in megatron-core 0.16.1 an `optim_grads_params` gradient buffer whose dp group has
    one rank is not really sharded, so the per-microbatch reduction adds the buffer to itself and the
    gradient doubles on every microbatch (buf_k = 2 * (buf_{k-1} + g_k); 2^N after N microbatches: the
    "grad norm 70x FSDP2's" seen at 8 microbatches). Upstream issue NVIDIA/Megatron-LM#6660, fixed after
    0.16.1 by PR #6773 (reduce once per cycle when the group has one rank). `no_shard` reduces the
    accumulated buffer without adding it back. tests/test_gpu.py compares the step-1 grad norm with FSDP2's."""
    return "optim_grads_params" if dp > 1 else "no_shard"


def shard_with_fsdp2(model: nn.Module, dims: ParallelDims, config: GPT3Config) -> None:
    """ZeRO-3: each transformer layer is its own FSDP unit (gathered just in time), then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if config.bf16 else None
    kwargs = {"mesh": dims.dp_mesh, "reshard_after_forward": True}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    for layer in model.decoder.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
