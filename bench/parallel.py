"""Data-parallel training of one run over several processes (GPUs), started by `accelerate launch` (or torchrun).

    accelerate launch --multi_gpu --num_processes 4 -m bench run --suite nightly-gpu

Every process runs the same suite, cell after cell, and trains each run together with the others: each joins the
process group the launcher describes in its environment (NCCL on GPUs, one GPU per process; gloo on CPUs), and
DataParallel splits every batch and averages gradients once per optimizer step. Only the main
process evaluates and writes the store and the tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# The others wait at a barrier while the main process evaluates a milestone; NCCL's default timeout (10 min)
# is shorter than a large model's evaluation.
BARRIER_TIMEOUT = timedelta(hours=2)


def start_data_parallel() -> DataParallel:
    """This process's place in the launched group (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT, as both
    launchers set them), joined here: torch's own env:// rendezvous works the same under either launcher, on GPUs
    and on CPUs alike."""
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=BARRIER_TIMEOUT)
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size())


def collective_device() -> torch.device:
    """Where tensors must be for the process group's collectives: this process's GPU under NCCL (which only moves
    CUDA memory), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run of one trainer over `world_size` processes (started by
    `accelerate launch`, which initialises torch.distributed): each process samples its share of every batch
    from its own random stream, and gradients are averaged once per optimizer step, so the effective batch is
    the config's whatever the number of processes, and the parameters stay identical on every process."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Only the main process writes results and reports."""
        return self.rank == 0

    def share(self, total: int, what: str) -> int:
        """This process's part of a batch of `total`; the config must split evenly."""
        if total % self.world_size:
            raise ValueError(
                f"{what} = {total} does not split over {self.world_size} processes; use a multiple of {self.world_size}"
            )
        return total // self.world_size

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """All-reduce the mean of the gradients over processes, in one bucket (a missing gradient counts as 0)."""
        if self.world_size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, piece in zip(parameters, flat.split([g.numel() for g in grads])):
            p.grad = piece.view_as(p).clone()

    def broadcast(self, parameters: list[torch.nn.Parameter]) -> None:
        """The main process's values of `parameters` in every process (as DDP starts): freshly initialised weights,
        such as LoRA adapters drawn from each process's own random state, start identical."""
        if self.world_size == 1:
            return
        for p in parameters:
            sent = p.data.to(collective_device())
            dist.broadcast(sent, src=0)
            p.data.copy_(sent)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's (B, ...) tensor, concatenated rank-major: (world_size * B, ...), for batch statistics
        that must be the whole batch's (every process passes the same shape)."""
        if self.world_size == 1:
            return tensor
        sent = tensor.to(collective_device()).contiguous()
        parts = [torch.empty_like(sent) for _ in range(self.world_size)]
        dist.all_gather(parts, sent)
        return torch.cat(parts).to(tensor.device)

    def local(self, gathered: torch.Tensor) -> torch.Tensor:
        """This process's rows of a gathered tensor."""
        size = len(gathered) // self.world_size
        return gathered[self.rank * size : (self.rank + 1) * size]

    def total(self, values: list[float]) -> list[float]:
        """The sums over processes of per-process counts (e.g. the meter's usage)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


ONE_PROCESS = DataParallel()
"""A run on this process alone (the default everywhere but under a launcher)."""
