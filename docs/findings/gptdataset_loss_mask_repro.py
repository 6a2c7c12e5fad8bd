"""Minimal reproducer: megatron-core's GPTDataset returns a loss mask that depends on which sample the
process fetched first. megatron-core alone (no chaos, no distributed run); a few seconds on a CPU.

    python gptdataset_loss_mask_repro.py

Exits 1 (AssertionError) while the bug is present, 0 once it is fixed. Tested with megatron-core 0.16.1
and Megatron-LM main at d98e8a64dd.
"""

import tempfile

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig, MockGPTDataset


class Tokenizer:
    """A tokenizer with its own pad id, distinct from eod (as most modern tokenizers have)."""

    vocab_size = 1024
    eod = 1023
    pad = 1022
    unique_identifiers = {"class": "repro.Tokenizer"}


def build(cache_dir: str):
    config = GPTDatasetConfig(random_seed=1234, sequence_length=128, blend=None, split="100,0,0",
                              tokenizer=Tokenizer(), reset_position_ids=False, reset_attention_mask=False,
                              eod_mask_loss=False, path_to_cache=cache_dir)
    train, _, _ = BlendedMegatronDatasetBuilder(MockGPTDataset, [100, 0, 0], lambda: True, config).build()
    return train


def main() -> None:
    with tempfile.TemporaryDirectory() as cache_dir:
        # The first sample whose labels hold the pad id (sample 0 has none, so this scan sees true masks).
        scan = build(cache_dir)
        padded = next(i for i in range(len(scan)) if scan[i]["loss_mask"].eq(0).any())
        later = padded + 1
        first_then_later = build(cache_dir)  # a process that fetches the padded sample first, then `later`
        pad_positions = first_then_later[padded]["loss_mask"].eq(0).nonzero().flatten().tolist()
        after_padded = first_then_later[later]["loss_mask"]
        alone = build(cache_dir)[later]["loss_mask"]  # a process whose first sample is `later`
        print(f"sample {padded}: label == pad at positions {pad_positions}")
        print(f"sample {later} fetched first by its process:    {int(alone.eq(0).sum())} masked positions")
        print(f"sample {later} fetched after sample {padded}:  {int(after_padded.eq(0).sum())} masked positions "
              f"{after_padded.eq(0).nonzero().flatten().tolist()}")
        assert torch.equal(alone, after_padded), (
            f"the loss mask of sample {later} depends on which sample the process fetched first: "
            f"GPTDataset cached sample {padded}'s loss mask and then masked its pad labels in place")
        print("ok: the loss mask does not depend on the order of fetches")


if __name__ == "__main__":
    main()
