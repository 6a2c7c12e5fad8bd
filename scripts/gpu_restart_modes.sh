#!/usr/bin/env bash
# GPU evidence for restart.warm on one GPU: the unmodified Megatron-LM job of
# scenarios/megatron_lm/restart_modes_1gpu.yaml (killed twice) restarted cold, from warm spares and forked
# from the zygote, against one golden recorded first (by the default mode, fork). Prints each run's verdict,
# every restart's seconds to the first resumed iteration with its stages, and what the zygote said of itself.
#
# Needs, from the project root: megatron-core and tenacity wheels in .whl/ and a Megatron-LM source tarball in
# .whl/megatron-lm/ (docs/gpu.md says how). On the device machine (run tool, one GPU): carry [".whl"], command
#   bash scripts/gpu_restart_modes.sh   (MODES="false true fork" by default; REPEATS=1 records the golden from one
#   run; logs to ${OUT:-gpu-restart-modes})
set -uo pipefail
out=${OUT:-gpu-restart-modes}; mkdir -p "$out"
source "$(dirname "$0")/_gpu_offline.sh"
scenario=scenarios/megatron_lm/restart_modes_1gpu.yaml
status=0
for mode in ${MODES:-false true fork}; do
  run_dir="/tmp/chaos-gpu-warm-$mode"  # outside $out: its checkpoints are large
  rm -rf "$run_dir"
  timeout "${RUN_TIMEOUT:-300}" python3 -m chaos.cli run "$scenario" --set "restart.warm=$mode" --out "$run_dir" \
    --golden-cache /tmp/chaos-gpu-goldens --repeats "${REPEATS:-2}" > "$out/run-$mode.log" 2>&1 || status=1
  grep -v -i warn "$out/run-$mode.log" | grep -E "^chaos:|golden|restarts" | head -4
  cp "$run_dir/supervisor.jsonl" "$out/supervisor-$mode.jsonl" 2>/dev/null
  python3 - "$run_dir" "$mode" <<'PY'
import json, sys
from pathlib import Path
run, mode = Path(sys.argv[1]), sys.argv[2]
try:
    report = json.loads((run / "report.json").read_text())
except OSError:
    sys.exit(0)
for row in report["timings"]["restart_to_first_resumed_step_s"]:
    stages = ", ".join(f"{k[:-2]} {v:.2f}" for k, v in row["breakdown"].items())
    print(f"warm={mode} attempt {row['attempt']}: {row['seconds']:.2f} s to the first resumed iteration ({stages})")
for line in (run / "supervisor.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["event"] == "attempt_start":
        print(f"warm={mode} attempt {record['attempt']} ranks started:",
              [(p.get("start"), p.get("warm_refusal")) for p in record["processes"]])
for log in sorted((run / "spares").glob("zygote-*.out")) if (run / "spares").exists() else []:
    print(f"{log.name}: {log.read_text()[-600:]}")
PY
done
exit $status
