"""Reproducer: a worker group that torchrun restarts cannot bring its gloo process group up again while the
rendezvous TCPStore is shared with the workers (torch's default since 2.5). Run it:

    torchrun --nnodes=1 --nproc-per-node=2 --max-restarts=1 --rdzv-backend=c10d \
        --rdzv-endpoint=127.0.0.1:0 torchrun_restart_shared_store_repro.py

torch 2.13.0: the restart fails ("Gloo connectFullMesh failed ... Connection refused"); with
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment every rank prints "process group up" twice.
"""
import os
import time

import torch.distributed as dist

rank = int(os.environ["RANK"])
restart = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
if rank == 1 and restart > 0:
    time.sleep(2)  # on the restart rank 1 is slower to reach init (a slower import, a bigger checkpoint)
dist.init_process_group("gloo")
dist.barrier()
if restart == 0 and rank == 1:
    os._exit(1)  # a worker dies after the process group is up: torchrun restarts the group
print(f"rank {rank} restart {restart}: process group up", flush=True)
dist.destroy_process_group()
