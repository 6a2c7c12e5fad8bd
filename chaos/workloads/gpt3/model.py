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


def build(config: GPT3Config, dims: ParallelDims) -> tuple[nn.Module, dict[str, TPLayout]]:
    from megatron.core.models.gpt.gpt_model import GPTModel

    model = GPTModel(
        config=transformer_config(config),
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
    else:
        raise NotImplementedError("fsdp: megatron (Megatron-FSDP) is wired in chaos.workloads.gpt3.megatron_fsdp")
    return model, layouts


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
