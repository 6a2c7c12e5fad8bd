#!/usr/bin/env bash
# The test suite (CPU, real multi-process training over gloo). GPU tests skip without CUDA; soak tests
# run only with -m soak. Extra arguments go to pytest.
source "$(dirname "$0")/_setup.sh"
# The multi-host Slurm tests run chaos's private Slurm cluster: Debian's daemons, installed here when this
# runs as root with apt-get (a few MB, seconds); elsewhere those tests skip, saying what is missing.
if ! command -v slurmctld >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  packages="slurmctld slurmd slurm-client munge"
  if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null 2>&1 ||
         { apt-get update -qq >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null 2>&1; }; }; then
    echo "test.sh: could not install $packages: the Slurm tests will skip" >&2
  fi
fi
set +e
python -m pytest -m "not soak" --durations=25 "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5): failing on purpose" >&2
  exit 1
fi
exit "$status"
