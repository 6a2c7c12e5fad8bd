"""`python -m chaos.workloads.gpt3 WORKLOAD.yaml` (one rank; torchrun or chaos starts N of them)."""

import sys

from chaos.probe import get_probe

# The probe says hello before torch is imported (~7 s), so the supervisor sees the rank at once; until the
# checkpoint load begins the rank is busy (imports, process groups, model, data): not a hang yet.
get_probe().busy("startup")

import chaos.workloads.gpt3.imports  # noqa: E402,F401  (torch, DCP, megatron-core, the trainer: as a spare does)
from chaos.workloads.gpt3.train import main  # noqa: E402

get_probe().event("startup_phase", phase="imports")  # the restart breakdown in report.json's timings

sys.exit(main())
