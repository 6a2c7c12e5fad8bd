#!/usr/bin/env bash
# GPU evidence on a CUDA machine (TP1 forms on one GPU, TP2 with 2, TP2 x DP2 with 4), megatron-core (and
# transformer-engine for the TE cases) importable. Writes logs to ${OUT:-gpu-evidence}/.
#   1. stop/resume vs uninterrupted (tests/test_gpu.py): FSDP2 and Megatron-FSDP, local and TE specs
#   2. the GPU twin of the upstream test through chaos's supervisor (four real faults), Megatron thresholds:
#      the TP2 scenario with >= 2 GPUs, the one-GPU scenario otherwise
set -uo pipefail
out=${OUT:-gpu-evidence}; mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/devices.txt"
status=0
gpus=$(nvidia-smi -L | grep -c '^GPU')
scenario=scenarios/gpu/gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor.yaml
[ "$gpus" -ge 2 ] || scenario=scenarios/gpu/gpt3_mcore_tp1_zero3_resume_fsdp_dtensor_1gpu.yaml
export SCENARIO_FILE="$scenario"
CHAOS_GPU_ITERS=${CHAOS_GPU_ITERS:-12} timeout "${TEST_TIMEOUT:-300}" python3 -m pytest tests/test_gpu.py -q -s \
  -p no:cacheprovider ${GPU_TESTS:+-k "$GPU_TESTS"} > "$out/test_gpu.log" 2>&1 || status=1
grep -E "GPU |final state|passed|failed" "$out/test_gpu.log"
for fsdp in ${SCENARIO_FSDP-torch megatron}; do
  run_dir="/tmp/chaos-gpu-$fsdp"  # outside $out: its checkpoints are large
  rm -rf "$run_dir"  # a fresh run: an old run directory would be resumed from, not re-run
  RUN_DIR="$run_dir" timeout "${SCENARIO_TIMEOUT:-200}" python3 - "$fsdp" "$out" <<'PY' 2>&1 | grep -v -i warn | tail -12 | tee "$out/scenario-$fsdp.log"
import sys
from pathlib import Path
from chaos.runner import run_scenario
from chaos.scenario import load_scenario
import os
fsdp, out = sys.argv[1], Path(sys.argv[2])
overrides = {"workload.fsdp": fsdp}
if os.environ.get("SCENARIO_IMPL"):  # e.g. local, where transformer-engine is not installed
    overrides["workload.transformer_impl"] = os.environ["SCENARIO_IMPL"]
scenario = load_scenario(os.environ["SCENARIO_FILE"], overrides)
result = run_scenario(scenario, out_dir=Path(os.environ["RUN_DIR"]))
print(result.summary)
for check in result.checks:
    print(f"  {check['name']}: {check['status']}: {check['detail'][:160]}")
sys.exit(0 if result.verdict == "pass" else 1)
PY
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  cp "$run_dir/report.json" "$out/report-$fsdp.json" || status=1
done
exit $status
