"""What the server ranks agree on each training iteration (trivial for one rank).

``mpiexec -n R breed server``: MPI gives each process its rank, torch.distributed (gloo on CPU,
nccl on GPU) does the DDP gradient all-reduce. Every iteration all ranks all-reduce a few flags
(how many samples each has, whether its buffer is fully seen, whether rank 0's table is
finished), so a rank that runs out of data keeps taking part in the collectives with a
zero-weight step instead of leaving the others blocked — no deadlock when ranks run dry at
different times.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Agreement:
    samples: int  # samples in this iteration's batches, all ranks together
    all_seen: bool  # every rank's buffer has been trained on entirely
    data_finished: bool  # rank 0: every simulation of the budget was received
    stop: bool  # some rank asks to stop (max_iterations)


class Collective:
    def __init__(self, comm: Any = None, host: str = "127.0.0.1", device: str = "cpu") -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        if self.size > 1 and not torch.distributed.is_initialized():
            port = None
            if self.rank == 0:
                with socket.socket() as s:
                    s.bind((host, 0))
                    port = s.getsockname()[1]
            port = comm.bcast(port, root=0)
            backend = "nccl" if device.startswith("cuda") else "gloo"
            torch.distributed.init_process_group(
                backend, init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.size
            )

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def agree(self, samples: int, all_seen: bool, data_finished: bool, stop: bool) -> Agreement:
        if self.size == 1:
            return Agreement(samples, all_seen, data_finished, stop)
        flags = torch.tensor(
            [samples, int(all_seen), int(data_finished), int(stop)], dtype=torch.int64
        )
        torch.distributed.all_reduce(flags)
        n, seen, finished, stop_votes = (int(v) for v in flags)
        return Agreement(n, seen == self.size, finished > 0, stop_votes > 0)

    def gather_losses(
        self, sim_ids: np.ndarray, steps: np.ndarray, losses: np.ndarray, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every rank's per-sample losses of this iteration, concatenated (rank 0's sampler
        sees the global batch, so eq. 4's batch mean and std are the DDP batch's)."""
        if self.size == 1:
            return sim_ids, steps, losses
        buf = torch.full((3, batch_size), -1.0, dtype=torch.float64)
        n = len(sim_ids)
        buf[0, :n] = torch.from_numpy(np.asarray(sim_ids, dtype=np.float64))
        buf[1, :n] = torch.from_numpy(np.asarray(steps, dtype=np.float64))
        buf[2, :n] = torch.from_numpy(np.asarray(losses, dtype=np.float64))
        parts = [torch.empty_like(buf) for _ in range(self.size)]
        torch.distributed.all_gather(parts, buf)
        allv = torch.cat(parts, dim=1).numpy()
        keep = allv[0] >= 0
        return (allv[0, keep].astype(np.int64), allv[1, keep].astype(np.int64), allv[2, keep])

    def allgather(self, obj: Any) -> list[Any]:
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def close(self) -> None:
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
