"""`python -m chaos.workloads.gpt3 WORKLOAD.yaml` (one rank; torchrun or chaos starts N of them)."""

import os
import sys
import traceback

from chaos.probe import get_probe

# The probe says hello before torch is imported (~7 s), so the supervisor sees the rank at once; until the
# checkpoint load begins the rank is busy (imports, process groups, model, data): not a hang yet.
get_probe().busy("startup")

import chaos.workloads.gpt3.imports  # noqa: E402,F401  (torch, DCP, megatron-core, the trainer: as a spare does)
from chaos.workloads.gpt3.train import main  # noqa: E402

get_probe().event("startup_phase", phase="imports")  # the restart breakdown in report.json's timings


def _exit_without_finalizing(code: int) -> None:
    """Ends the rank as soon as its work is durable, skipping the interpreter's finalization.

    Finalizing an interpreter that imported torch and megatron-core and trained (module teardown, the
    model's and gloo's destructors) took 2.3-2.5 s per rank here, after the last atexit handler: paid at
    every attempt's end, and by every survivor a teardown stops. Nothing is lost by skipping it: by the time
    main() returns the checkpoint is finalized and the process groups destroyed, history lines are written
    unbuffered, and the two streams are flushed here. Exceptions print their traceback and exit 1, as Python
    would; KeyboardInterrupt and SystemExit keep Python's own handling."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


try:
    exit_code = main()
except Exception:
    traceback.print_exc()
    exit_code = 1
_exit_without_finalizing(exit_code)
