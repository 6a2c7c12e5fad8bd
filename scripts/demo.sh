#!/usr/bin/env bash
# The flagship scenario on CPU: megatron-core GPT-3, TP2 x DP2 (4 ranks), FSDP2 ZeRO-3, DCP checkpoints;
# SIGKILL mid-backward, SIGKILL between checkpoint shard writes, graceful SIGTERM, a kill during the
# restarted run's load. Prints the verdict; exit 0 = pass.
source "$(dirname "$0")/_setup.sh"
exec chaos run scenarios/gpt3_mcore_tp2_zero3_resume_fsdp_dtensor.yaml "$@"
