#!/usr/bin/env bash
# GPU evidence for restart.by: job on one GPU: unmodified Megatron-LM under NVIDIA's ft_launcher restarting
# itself (scenarios/megatron_lm/ft_launcher_job_restarts_1gpu.yaml), then the same job with chaos's cold
# restarts (--set restart.by=chaos), against one golden recorded here first. Prints both verdicts and each
# recovery's fault -> detected / -> first resumed iteration; logs and reports to ${OUT:-gpu-job-recovery}/.
#
# Needs, from the project root: megatron-core (and tenacity) wheels in .whl/ (docs/gpu.md says how), and
# nvidia-resiliency-ext 0.7.0 + defusedxml in .whl/nvrx/, a Megatron-LM source tarball in .whl/megatron-lm/
# (see scripts/gpu_inprocess_probe.sh's header). On the device machine (Python 3.12, torch, no network):
#   carry [".whl"], command: bash scripts/gpu_job_recovery.sh
set -uo pipefail
out=${OUT:-gpu-job-recovery}; mkdir -p "$out"
EXTRA_WHEELS=".whl/nvrx/*.whl" source "$(dirname "$0")/_gpu_offline.sh"
scenario=scenarios/megatron_lm/ft_launcher_job_restarts_1gpu.yaml
status=0
for by in job chaos; do
  run_dir="/tmp/chaos-gpu-by-$by"  # outside $out: its checkpoints are large
  rm -rf "$run_dir"
  # the first run records the golden too (two uninterrupted runs, ~2 min on an H200)
  limit=$([ "$by" = job ] && echo "${RUN_TIMEOUT:-420}" || echo "${RUN_TIMEOUT:-240}")
  timeout "$limit" python3 -m chaos.cli run "$scenario" --set "restart.by=$by" --out "$run_dir" \
    --golden-cache /tmp/chaos-gpu-goldens > "$out/run-by-$by.log" 2>&1 || status=1
  grep -v -i warn "$out/run-by-$by.log" | tail -14
  cp "$run_dir/report.json" "$out/report-by-$by.json" 2>/dev/null
  cp "$run_dir/supervisor.jsonl" "$out/supervisor-by-$by.jsonl" 2>/dev/null
  cp "$run_dir/attempts/01/agent-0.out" "$out/agent-by-$by.out" 2>/dev/null
  python3 - "$run_dir/report.json" "$by" <<'PY'
import json, sys
try:
    report = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(0)
for row in report["timings"]["recovery_s"]:
    print(f"by {sys.argv[2]}: {row}")
PY
done
exit $status
