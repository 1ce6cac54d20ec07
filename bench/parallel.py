"""Data-parallel training of one run over several processes (GPUs), started by `accelerate launch` (or torchrun).

    accelerate launch --multi_gpu --num_processes 4 -m bench run --suite nightly-gpu

Every process runs the same suite, cell after cell, and trains each run together with the others: each joins the
process group the launcher describes in its environment (NCCL on GPUs, one GPU per process; gloo on CPUs), and
methods.trainer.DataParallel splits every batch and averages gradients once per optimizer step. Only the main
process evaluates and writes the store and the tables.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from methods.trainer import DataParallel

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
