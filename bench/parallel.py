"""Data-parallel training of one run over several processes (GPUs), started by `accelerate launch` (or torchrun),
and the sharding of a full fine-tune over them (FSDP2).

    accelerate launch --multi_gpu --num_processes 4 -m bench run --suite nightly-gpu
    torchrun --nproc_per_node 8 -m bench run --suite nightly-gpu --sharding fsdp2

Every process runs the same suite, cell after cell, and trains each run together with the others: each joins the
process group the launcher describes in its environment (NCCL on GPUs, one GPU per process; gloo on CPUs), and
DataParallel splits every batch and averages gradients once per optimizer step. Only the main process writes the store
and the tables; it alone evaluates, except in a sharded run, whose every forward pass takes all the processes.

Sharding (`--sharding fsdp2`) trains every weight of a scale world's denoiser with torch's FSDP2 (`fully_shard`)
directly rather than through accelerate's plugin: the policy, not a wrapper, decides its units (each block of the
denoiser, then the model), the same code runs with or without a launcher, and accelerate would add nothing the run loop
needs. Each process keeps 1/N of the float32 parameters, gradients and optimizer moments; a block's parameters are
gathered (in the policy's `dtype` on a GPU: bf16 by default) for its forward and backward and freed after; gradients
are reduce-scattered as their mean in float32. Checkpoints are sharded: each process saves its own shards, in the same
tensors-only file it keeps its random state in (bench/runner.py).
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
        """All-reduce the mean of the gradients over processes, in one bucket (a missing gradient counts as 0). Sharded
        parameters are left out: FSDP2 reduce-scattered their mean in the backward pass."""
        from torch.distributed.tensor import DTensor  # imported here: half a second that unsharded runs need not pay

        parameters = [p for p in parameters if not isinstance(p, DTensor)]
        if self.world_size == 1 or not parameters:
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
        from torch.distributed.tensor import DTensor

        # a sharded parameter needs none: every process loaded the same weights and keeps its own shard of them
        for p in (p for p in parameters if not isinstance(p, DTensor)):
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


SHARD = "fsdp2_shard"
"""The key of a checkpoint entry holding one process's shard of a sharded tensor (`local_shards`)."""


def shard_policy(policy, parallel: DataParallel):
    """Shards a full fine-tune's denoiser (and its reference) over the run's processes with FSDP2 and returns the
    device mesh; a run without a launcher gets a process group of one, in memory, so that one GPU shards the same way
    (nothing to split, but the same mixed precision and checkpoints)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = policy.device
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1
        )
    if dist.get_world_size() != parallel.world_size:
        raise ValueError(f"the process group has {dist.get_world_size()} processes, the run {parallel.world_size}")
    mesh = init_device_mesh(device.type, (parallel.world_size,))

    def shard(module: torch.nn.Module, compute_dtype: torch.dtype) -> None:
        # gathered in the compute dtype, reduced in float32: the mean of N bf16 gradients would lose their low bits
        precision = MixedPrecisionPolicy(
            param_dtype=None if compute_dtype == torch.float32 else compute_dtype, reduce_dtype=torch.float32
        )
        fully_shard(module, mesh=mesh, mp_policy=precision)

    policy.shard(shard)
    return mesh


def local_shards(state):
    """`state` (nested dicts, lists and tuples) with each sharded tensor (a DTensor: a parameter, its gradient's
    optimizer moments) replaced by this process's shard and its global shape and stride: what a tensors-only
    checkpoint holds, and `sharded` rebuilds."""
    from torch.distributed.tensor import DTensor, Shard

    if isinstance(state, DTensor):
        if tuple(state.placements) != (Shard(0),):
            raise ValueError(f"only FSDP2's row shards are saved, got placements {state.placements}")
        return {SHARD: state.to_local(), "shape": list(state.shape), "stride": list(state.stride())}
    if isinstance(state, dict):
        return {key: local_shards(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(local_shards(value) for value in state)
    return state


def sharded(state, mesh):
    """The inverse of `local_shards` on `mesh`: every shard saved by this process made a DTensor again."""
    from torch.distributed.tensor import DTensor, Shard

    if isinstance(state, dict):
        if SHARD in state:
            return DTensor.from_local(
                state[SHARD],
                mesh,
                (Shard(0),),
                run_check=False,
                shape=torch.Size(state["shape"]),
                stride=tuple(state["stride"]),
            )
        return {key: sharded(value, mesh) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(sharded(value, mesh) for value in state)
    return state
