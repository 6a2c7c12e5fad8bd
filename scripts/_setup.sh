# Sourced by demo.sh and test.sh: makes .venv (if missing) and installs chaos into it (when pyproject changed).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.chaos-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # torch is pinned to 2.13.0 in pyproject: that release is a CPU build here; a range would pull CUDA wheels.
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,nvrx]' > .venv/install.log 2>&1; then
    cat .venv/install.log >&2
    echo "chaos: installing into .venv failed (log above, also in .venv/install.log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
