"""In-process restart of the gpt3 trainer (workload option `inprocess_restarts` > 0), wired the way Megatron-LM's
--inprocess-restart wires NVIDIA's resiliency extension: the training function runs inside
`nvidia_resiliency_ext.inprocess.Wrapper`, and after an exception in any rank, or a rank making no progress
for the soft timeout (stopped, hung in a collective), the wrapper aborts every rank's process groups and
calls the function again in the same processes. Each entry builds everything anew (process groups, model,
optimizer, data) and loads the newest committed checkpoint, as a fresh process would; each is the job's next
attempt to chaos (chaos.probe.reenter). Imported only when asked for: with inprocess_restarts 0 nothing of
NVRx is.

One store, two prefixes. The wrapper needs a store that outlives every entry, hosted by rank 0; each entry's
process groups need a fresh one. Both are one TCPStore server on MASTER_PORT, hosted by rank 0's wrapper
(JobStore): under torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (the trainer's setting) MASTER_PORT is
the port the agent found free for exactly this, the worker group's store, and torchrun's own store is on the
rendezvous endpoint. A second port derived from it (Megatron-LM uses MASTER_PORT+1 for its process groups'
store and +2 for the wrapper's) is reserved by no one and can be another process's on a shared machine, and
NVRx's own TCPStore then silently connects to whatever holds it. The server is made after the wrapper has
forked its monitor process, so that process does not inherit the listening socket.

Aborting on gloo. NVRx's abort destroys every process group, and on NCCL aborts the communicators, which ends
a collective blocked on a failed peer. gloo has no such abort: destroy_process_group, and in torch 2.13 the
gloo backend's own abort() and shutdown(), leave a collective blocked until the peer's connections close or
its timeout expires (measured); a gloo group's connections close only when its last reference goes. So an
entry that fails lets go of every reference it held to its process groups (let_go_of_process_groups) before
the wrapper aborts them: the peers' blocked collectives then fail at once, as on NCCL. A peer that is stopped
keeps its connections open: there every collective's own timeout, the soft timeout (train.train_entry), is
what frees the ranks waiting for it. A rank killed outright cannot re-enter anything: the job ends.

Not shipped by NVRx and so chosen here for a CPU machine: the monitor process checks every 0.3 s (at NVRx's
default 1 s it misses a soft timeout, measured), and the timeouts scale with the soft timeout.
"""

import datetime
import gc
import logging
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

import torch
import nvidia_resiliency_ext.inprocess as inprocess
from nvidia_resiliency_ext.inprocess.store import StoreMixin

from chaos import control, history, probe as probe_module, safe_files
from chaos.probe import Probe
from chaos.workloads.gpt3 import parallel
from chaos.workloads.gpt3.config import GPT3Config

# No `from __future__ import annotations` here: the wrapper finds the parameter it passes itself to by its
# annotation's class (inspect.signature, not evaluated strings).

WRAPPER_PREFIX = "inprocess/"
ENTRY_PREFIX = "entry-{reentry}/"
STORE_TIMEOUT_S = 300.0
MONITOR_INTERVAL = datetime.timedelta(seconds=0.3)
PROGRESS_INTERVAL = datetime.timedelta(seconds=1.0)
HEARTBEAT_INTERVAL = datetime.timedelta(seconds=1.0)
LOG_FORMAT = "%(asctime)s | %(levelname)s | %(name)s | %(message)s"
MONITOR_LOG = "inprocess-monitor-{rank}.log"


class JobStore(torch.distributed.PrefixStore, StoreMixin):
    """The wrapper's store (its store_factory, built by the wrapper in every rank and again in every rank's
    monitor process): the one process `host_pid` of rank 0 hosts the server on MASTER_PORT, every other is a
    client. Binding fails loudly if the port is taken: never a silent client of someone else's store."""

    def __init__(self, host_name: str, port: int, host_pid: int, timeout_s: float) -> None:
        hosts = int(os.environ["RANK"]) == 0 and os.getpid() == host_pid
        server_or_client = torch.distributed.TCPStore(host_name, port, is_master=hosts, wait_for_workers=False,
                                                      timeout=datetime.timedelta(seconds=timeout_s), use_libuv=True)
        super().__init__(WRAPPER_PREFIX, server_or_client)

    @property
    def critical_ranks(self) -> tuple[int, ...]:
        return (0,)  # the host: it leaves last, once every rank is through the termination barrier


def entry_store(host_name: str, port: int, reentry: int) -> torch.distributed.Store:
    """The process groups' store of one entry: a client of the job's server, under a prefix of its own (the
    keys of an aborted entry's groups never meet the next one's)."""
    client = torch.distributed.TCPStore(host_name, port, is_master=False,
                                        timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S), use_libuv=True)
    return torch.distributed.PrefixStore(ENTRY_PREFIX.format(reentry=reentry), client)


class WrapperLines(logging.Handler):
    """The wrapper's own words about a failure, into the rank's history as it logs them: that it caught the
    function's exception (fn_ex), was told to restart by another rank's failure or a timeout (term_ex),
    restarts (restart_ex) or gives up (exit_ex). The earliest is when the job's in-process layer detected the
    fault, stamped by the rank that logged it (report.model.recoveries)."""

    KIND = re.compile(r"\brank=\d+ (fn_ex|term_ex|restart_ex|exit_ex): ")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            match = self.KIND.search(message)
            if match:
                probe_module.get_probe().event(history.JOB_INTERRUPTED, layer="in_process", kind=match.group(1),
                                               line=safe_files.one_line(message, 300))
        except Exception:  # noqa: BLE001 - logging's contract: a handler never raises into the logging code
            self.handleError(record)


def let_go_of_process_groups(failure: BaseException) -> None:
    """After a failed entry, torch's own registry is left the only holder of its process groups (the wrapper's
    abort destroys them there, and gloo then closes their connections): the locals of every frame the failure
    unwound (the trainer, its model and optimizer, the batch in flight), the trainer's signal handler and
    megatron-core's globals let go, and the cycles among them collected now, not at the wrapper's collection
    after the restart barrier, which the peers blocked on these connections would never reach."""
    traceback.clear_frames(failure.__traceback__)
    # the trainer's SIGTERM handler (Megatron's --exit-signal-handler) holds the trainer; the next entry's
    # trainer installs its own, and until then a SIGTERM ends the rank (nothing is in training to save)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parallel.forget_model_parallel()
    gc.collect()


def log_wrapper_lines(into_history: bool = True) -> None:
    """The wrapper logs only through a stream handler it finds above its logger (without one: "logging not
    initialized, logs are disabled"); its lines go to the rank's output at INFO, other libraries' levels
    untouched, and (`into_history`) its failure lines into the history (WrapperLines). A trainer that knows
    nothing of chaos (tests/trainers/megatron_like.py) only prints them, as Megatron-LM does."""
    root = logging.getLogger()
    if not any(type(handler) is logging.StreamHandler for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    logging.getLogger("nvidia_resiliency_ext").setLevel(logging.INFO)
    if into_history:
        logging.getLogger("nvidia_resiliency_ext.inprocess.wrap").addHandler(WrapperLines())


def monitor_log(rank: int) -> str | None:
    """Where each rank's monitor process logs: the launch attempt's directory inside the run directory (None,
    i.e. /dev/null, outside chaos). An absolute path ({rank} filled in by NVRx; other braces escaped). This
    rank's file is made here, readable by others only: the monitor daemonizes with umask 0 and would make it
    writable by anyone."""
    directory = os.environ.get(control.ENV_HISTORY_DIR)
    if not directory:
        return None
    directory = str(Path(directory).absolute())
    os.close(os.open(os.path.join(directory, MONITOR_LOG.format(rank=rank)),
                     os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
    escaped = directory.replace("{", "{{").replace("}", "}}")
    return f"{escaped}/{MONITOR_LOG}"


def wrapper_for(config: GPT3Config, host_name: str, port: int, bounded: bool = True,
                restarter_lines: bool = False) -> inprocess.Wrapper:
    """The wrapper with this job's budget (max_iterations = inprocess_restarts + 1; `bounded` False: none, as
    Megatron-LM's pretrain_gpt.py builds it) and timeouts. Every rank must take part in every entry: the world size
    is the job's (a terminated rank ends the job, not shrinks it). `restarter_lines`: NVRx's nested-restarter
    callbacks composed in as Megatron-LM composes them, printing `[NestedRestarter] ... state=...` (rank 0)."""
    soft = datetime.timedelta(seconds=config.inprocess_soft_timeout_s)
    world = config.world_size
    initialize = inprocess.initialize.RetryController(
        **({"max_iterations": config.inprocess_restarts + 1} if bounded else {}),
        min_world_size=world, min_active_world_size=world)
    abort = inprocess.abort.AbortTorchDistributed()
    restarter = {}
    if restarter_lines:
        nested = inprocess.nested_restarter
        initialize = inprocess.Compose(initialize, nested.NestedRestarterHandlingCompleted())
        abort = inprocess.Compose(abort, nested.NestedRestarterHandlingStarting())
        restarter = {"completion": nested.NestedRestarterFinalized(), "terminate": nested.NestedRestarterAborted()}
    return inprocess.Wrapper(
        store_factory=JobStore,
        store_kwargs={"host_name": host_name, "port": port, "host_pid": os.getpid(), "timeout_s": STORE_TIMEOUT_S},
        initialize=initialize,
        abort=abort,
        monitor_process_interval=MONITOR_INTERVAL,
        monitor_thread_interval=MONITOR_INTERVAL,
        progress_watchdog_interval=PROGRESS_INTERVAL,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        soft_timeout=soft,
        hard_timeout=3 * soft,
        heartbeat_timeout=3 * soft,
        barrier_timeout=6 * soft,
        completion_timeout=6 * soft,
        monitor_process_logfile=monitor_log(int(os.environ["RANK"])),
        **restarter,
    )


def run_entries(config: GPT3Config, entry: Callable[[int, Callable[[], torch.distributed.Store]], int],
                bounded: bool = True, restarter_lines: bool = False) -> int:
    """Runs `entry(reentry, store)` under the wrapper (wrapper_for) until one entry completes on every rank, or the
    wrapper gives up (its exception propagates: the rank exits 1). `store()` makes that entry's process groups'
    store. After a failed entry this rank's process groups are let go before the wrapper sees the failure."""
    host_name, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])

    def wrapped(call: Optional[inprocess.CallWrapper] = None) -> int:
        reentry = call.iteration
        try:
            return entry(reentry, lambda: entry_store(host_name, port, reentry))
        except BaseException as failure:  # the wrapper's to handle; this rank's groups must let go first
            let_go_of_process_groups(failure)
            raise

    return wrapper_for(config, host_name, port, bounded=bounded, restarter_lines=restarter_lines)(wrapped)()


def run(config: GPT3Config, train: Callable[[GPT3Config, Probe, torch.distributed.Store, int], int]) -> int:
    """Runs `train(config, probe, store, reentry)` under the wrapper: each re-entry the next attempt, its probe
    saying hello again from this process (chaos.probe.reenter)."""
    log_wrapper_lines()

    def entry(reentry: int, store: Callable[[], torch.distributed.Store]) -> int:
        probe = probe_module.reenter(reentry) if reentry else probe_module.get_probe()
        return train(config, probe, store(), reentry)

    return run_entries(config, entry)
