#!/usr/bin/env bash
# The test suite (CPU, real multi-process training over gloo). GPU tests skip without CUDA; soak tests
# run only with -m soak. Extra arguments go to pytest.
source "$(dirname "$0")/_setup.sh"
set +e
python -m pytest -m "not soak" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests (exit 5): failing on purpose" >&2
  exit 1
fi
exit "$status"
