"""Data: megatron-core's dataset stack. MockGPTDataset through BlendedMegatronDatasetBuilder by default,
or a megatron indexed dataset (.bin/.idx) by path prefix. The position is a pure function of consumed
samples, so restoring `consumed_samples` restores the data order exactly (like Megatron's
MegatronPretrainingSampler: each global batch is split into micro batches, and each data-parallel rank
takes its contiguous slice of every micro batch).

Masks are built per sample. megatron-core's GPTDataset (0.16.1 and upstream main) caches the loss mask of
the first sample a process fetches and then zeroes that sample's pad labels in the cached tensor itself, so
every later sample of the process inherits the first one's pad positions: a resumed process, whose first
sample is another, trains on other masks (docs/findings/gptdataset-loss-mask-cache.md). The bug switch
`upstream_loss_mask_cache` keeps that behaviour, so a test proves chaos sees it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from chaos.workloads.gpt3.config import GPT3Config
from chaos.workloads.gpt3.parallel import ParallelDims


class MockTokenizer:
    """What GPTDataset asks of a tokenizer: a vocabulary size, the end-of-document and pad ids."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.eod = vocab_size - 1
        self.pad = vocab_size - 2
        self.unique_identifiers = {"class": "chaos.MockTokenizer", "vocab_size": vocab_size}


@dataclass
class MicroBatch:
    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None


class TrainData:
    def __init__(self, config: GPT3Config, dims: ParallelDims, cache_dir: str) -> None:
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

        self.config = config
        self.dims = dims
        tokenizer = MockTokenizer(config.vocab_size)
        blend = ([config.data_path], None) if config.data_path else None
        dataset_config = GPTDatasetConfig(
            random_seed=config.seed,
            sequence_length=config.seq_length,
            blend=blend,
            split="100,0,0",
            tokenizer=tokenizer,
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=True,
            path_to_cache=cache_dir,
            mmap_bin_files=True,
        )
        total_samples = config.train_iters * config.global_batch_size
        dataset_class = GPTDataset if config.data_path else MockGPTDataset
        train, _, _ = BlendedMegatronDatasetBuilder(
            dataset_class, [total_samples, 0, 0], lambda: True, dataset_config
        ).build()
        self.dataset = train
        # the GPTDatasets whose mask cache must not carry one sample's pads into the next (a blend holds several)
        self._mask_caches = [] if config.has_bug("upstream_loss_mask_cache") else _gpt_datasets(train)
        self._static: dict[str, torch.Tensor | None] = {}

    def global_batch(self, consumed_samples: int) -> tuple[list[MicroBatch], str]:
        """This rank's micro batches of the global batch that starts at `consumed_samples`, and a fingerprint
        of everything the model sees of the whole global batch (for the data-order check): tokens, labels,
        loss mask, position ids and attention mask of every data-parallel rank's samples, hashed before they
        move to the device."""
        config, dims = self.config, self.dims
        micro_batches = []
        digest = hashlib.sha256()
        for micro in range(config.num_microbatches):
            start = consumed_samples + micro * config.micro_batch_size * dims.dp + dims.dp_rank * config.micro_batch_size
            samples = [self._sample(index) for index in range(start, start + config.micro_batch_size)]
            micro_batches.append(self._collate(samples, digest))
        return micro_batches, self._global_digest(digest.digest())

    def _sample(self, index: int) -> dict:
        for dataset in self._mask_caches:
            dataset.masks_and_position_ids_are_cached = False  # built afresh, as the first fetch of a process
        return self.dataset[index]

    def _global_digest(self, local: bytes) -> str:
        """One hash over every data-parallel rank's digest, in dp order (TP peers see the same samples)."""
        if self.dims.dp == 1:
            return hashlib.sha256(local).hexdigest()[:16]
        mine = torch.frombuffer(bytearray(local), dtype=torch.uint8).to(self.dims.device)
        gathered = torch.empty(self.dims.dp * mine.numel(), dtype=torch.uint8, device=self.dims.device)
        dist.all_gather_into_tensor(gathered, mine, group=self.dims.dp_group)
        return hashlib.sha256(gathered.cpu().numpy().tobytes()).hexdigest()[:16]

    def _collate(self, samples: list[dict], digest) -> MicroBatch:
        device = self.dims.device

        def stack(key: str) -> torch.Tensor:
            return torch.stack([torch.as_tensor(sample[key]) for sample in samples])

        tokens = stack("tokens").long()
        labels = stack("labels").long()
        loss_mask = stack("loss_mask").float()
        position_ids = stack("position_ids").long()
        attention_mask = stack("attention_mask") if "attention_mask" in samples[0] else None
        for tensor in (tokens, labels, loss_mask, position_ids, attention_mask):
            if tensor is not None:
                digest.update(tensor.contiguous().numpy().tobytes())
        if not self._static:
            # With no position/mask resets and no EOD loss masking (the config above), megatron's GPTDataset
            # hands every sample the same cached attention mask and position ids: stack and move them once.
            self._static["position_ids"] = position_ids.to(device)
            self._static["attention_mask"] = attention_mask.to(device) if attention_mask is not None else None
        return MicroBatch(
            tokens=tokens.to(device),
            labels=labels.to(device),
            loss_mask=loss_mask.to(device),
            position_ids=self._static["position_ids"],
            attention_mask=self._static["attention_mask"],
        )


def _gpt_datasets(dataset) -> list:
    """The GPTDatasets under what the builder returned (itself, or the members of a BlendedDataset)."""
    from megatron.core.datasets.gpt_dataset import GPTDataset

    if isinstance(dataset, GPTDataset):
        return [dataset]
    return [d for d in getattr(dataset, "datasets", []) if isinstance(d, GPTDataset)]
