"""A batch command run as several processes under torchrun: joining the process group, adding up the
ranks' counts, and leaving it so that torchrun reports the run as it went.

The input's windows are dealt round-robin to the ranks (`InferenceEngine.run(shard=...)`); each rank
writes its own part and rank 0 merges the parts (`merge`). The collectives carry a few counts held on
the host, through gloo even on GPUs: NCCL would refuse two ranks on one GPU (`--device cuda:0`) at the
first collective, after all the work.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Any

import torch
import torch.distributed as dist

from rembert_fast import inference


def world_size() -> int:
    """The number of processes torchrun started ($WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: str | None) -> tuple[int, int, str | None]:
    """(rank, world size, device) under torchrun, after joining the process group; (0, 1, device)
    otherwise. A CUDA device becomes this process's cuda:LOCAL_RANK. ValueError names a device that does
    not exist (more processes than GPUs)."""
    world = world_size()
    if world == 1:
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(inference.resolve_device(device))
    # Ranks finish their shares at different times and wait for the slowest at the merge.
    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=12))
    return dist.get_rank(), dist.get_world_size(), device


def combine(counts: list[int], seconds: float) -> tuple[list[int], float]:
    """Every rank's counts added up, and the slowest rank's seconds. Both reductions also wait for every
    rank to finish its part, so rank 0 may merge the parts after this."""
    summed = torch.tensor(counts, dtype=torch.float64)
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    slowest = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    return [int(c) for c in summed.tolist()], slowest.item()


def leave(rank: int, wait_for_others: bool) -> None:
    """Leave the process group after a barrier. With `wait_for_others`, rank 0 then waits until the other
    ranks on this host have exited: a rank that will exit non-zero (error records) must not exit while
    others still run, or torchrun kills them and reports them failed too."""
    pids: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(pids, (socket.gethostname(), os.getpid()))
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0 and wait_for_others:
        _other_ranks_exited(pids)


def _other_ranks_exited(pids: list[tuple[str, int]]) -> None:
    """Wait (30 s at most) until the other ranks on this host have exited, as /proc/<pid>/stat shows."""
    deadline = time.monotonic() + 30
    for host, pid in pids:
        while host == socket.gethostname() and pid != os.getpid() and time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break
            if state in ("Z", "X"):  # exited, not yet reaped by torchrun
                break
            time.sleep(0.02)
