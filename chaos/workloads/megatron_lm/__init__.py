"""An unmodified Megatron-LM training job as the system under test, followed from its log lines and its checkpoint directory."""
