#!/usr/bin/env bash
# Nightly soak: every CPU scenario given (default: scenarios/random_seeded.yaml) soaked for a while under
# seeded random faults, each in a dated directory under runs/nightly/, with a JUnit file per scenario.
# Failures are shrunk to minimal reproducers (runs/nightly/<date>/<name>/minimal-NNN.yaml) and the script
# exits non-zero if any cycle failed. Re-running it on the same day continues an interrupted soak.
#
#   scripts/nightly-soak.sh                      # 2h on scenarios/random_seeded.yaml
#   DURATION=30m SEED=7 scripts/nightly-soak.sh scenarios/node_kill.yaml scenarios/hang_sigstop.yaml
source "$(dirname "$0")/_setup.sh"
duration=${DURATION:-2h}
seed=${SEED:-$(date +%Y%m%d)}
out_root=runs/nightly/$(date +%Y-%m-%d)
mkdir -p "$out_root"
if [ "$#" -eq 0 ]; then
  set -- scenarios/random_seeded.yaml
fi
status=0
for scenario in "$@"; do
  name=$(basename "$scenario" .yaml)
  set +e
  chaos soak "$scenario" --duration "$duration" --seed "$seed" --out "$out_root/$name" --keep-going
  code=$?
  set -e
  echo "nightly-soak: $scenario -> exit $code; junit $out_root/$name/junit.xml; report $out_root/$name/soak.html"
  if [ "$code" -ne 0 ]; then
    status=1
  fi
done
exit "$status"
