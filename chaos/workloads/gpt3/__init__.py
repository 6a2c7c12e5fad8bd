"""The built-in system under test: megatron-core GPT-3, TP + FSDP2 ZeRO-3, DCP checkpoints."""
