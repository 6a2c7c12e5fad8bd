"""Single-process pieces of the workload: the CPU substitutions for megatron-core, the clear error when
transformer-engine is missing, and config validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chaos.errors import InputError
from chaos.workloads.gpt3 import cpu_compat
from chaos.workloads.gpt3.config import GPT3Config


def test_cpu_tracker_forks_its_own_stream_and_restores_the_default():
    tracker = cpu_compat.CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 1234)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        first = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before), "the default stream must be untouched by a fork"
    with tracker.fork("model-parallel-rng"):
        second = torch.rand(3)
    assert not torch.equal(first, second), "the forked stream advances between forks"
    saved = tracker.get_states()
    with tracker.fork("model-parallel-rng"):
        third = torch.rand(3)
    tracker.set_states(saved)
    with tracker.fork("model-parallel-rng"):
        assert torch.equal(torch.rand(3), third), "set_states restores the stream exactly (checkpoint resume)"
    with pytest.raises(RuntimeError):
        tracker.add("other", 1234)  # a seed used twice would correlate two streams


def test_apply_installs_cpu_buffer_and_tracker():
    import megatron.core.tensor_parallel.random as megatron_random
    from megatron.core.utils import GlobalMemoryBuffer

    cpu_compat.apply()
    cpu_compat.apply()  # idempotent
    assert isinstance(megatron_random.get_cuda_rng_tracker(), cpu_compat.CpuRNGStatesTracker)
    buffer = GlobalMemoryBuffer().get_tensor((4, 8), torch.float32, "test")
    assert buffer.device.type == "cpu" and buffer.shape == (4, 8)


def test_transformer_engine_missing_is_a_clear_error(monkeypatch):
    import builtins

    from chaos.workloads.gpt3 import model

    real_import = builtins.__import__

    def no_te(name, *args, **kwargs):
        if name.startswith("transformer_engine"):
            raise ImportError("No module named 'transformer_engine'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_te)
    config = dataclasses.replace(GPT3Config(), transformer_impl="transformer_engine", device="cuda")
    with pytest.raises(RuntimeError, match=r"transformer-engine>=2.9,<2.12"):
        model.layer_spec(config)


@pytest.mark.parametrize("overrides,field,expected", [
    ({"world_size": 3}, "workload.world_size", "multiple of tensor_parallel"),
    ({"fsdp": "megatron"}, "workload.fsdp", "CUDA-only"),
    ({"transformer_impl": "transformer_engine"}, "workload.transformer_impl", "device: cuda"),
    ({"global_batch_size": 6}, "workload.global_batch_size", "multiple of micro_batch_size"),
    ({"bugs": ["no_rng_restor"]}, "workload.bugs", "did you mean no_rng_restore"),
    ({"tensor_paralel": 2}, "workload.tensor_paralel", "did you mean tensor_parallel"),
    # optional fields (`int | None`) are type-checked too: "4" would never equal a step
    ({"exit_at_iter": "4"}, "workload.exit_at_iter", "expected an integer"),
    ({"load_dir": 5}, "workload.load_dir", "expected a string"),
])
def test_config_errors_name_the_field(overrides, field, expected):
    with pytest.raises(InputError) as error:
        GPT3Config.from_mapping(overrides, "s.yaml")
    assert error.value.field == field and expected in error.value.message


def test_presets_and_derived_sizes():
    tiny = GPT3Config.from_mapping({}, "s.yaml")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_attention_heads, tiny.seq_length) == (4, 128, 4, 128)
    assert tiny.data_parallel == 2 and tiny.num_microbatches == 2 and tiny.hidden_dropout == 0.1
    upstream = GPT3Config.from_mapping({"preset": "upstream_gpu"}, "s.yaml")
    assert (upstream.num_layers, upstream.hidden_size, upstream.num_attention_heads, upstream.seq_length,
            upstream.micro_batch_size, upstream.global_batch_size) == (12, 512, 8, 1024, 4, 32)
    assert upstream.padded_vocab_size % 256 == 0 and upstream.bf16


def test_parameter_names_lose_every_wrapper_prefix():
    from chaos.workloads.gpt3.model import plain_name

    assert plain_name("module.module.decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"
    assert plain_name("embedding.word_embeddings.weight") == "embedding.word_embeddings.weight"


def test_megatron_fsdp_shards_only_where_dp_has_ranks():
    from chaos.workloads.gpt3.model import megatron_zero_strategy

    assert megatron_zero_strategy(2) == "optim_grads_params"
    assert megatron_zero_strategy(1) == "no_shard"  # megatron-core 0.16.1 doubles grads per microbatch at dp=1
