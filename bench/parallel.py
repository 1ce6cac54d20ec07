"""Data-parallel training of one run over several processes (GPUs), started by `accelerate launch`.

    accelerate launch --num_processes 4 -m bench run --suite nightly-gpu

Every process runs the same suite, cell after cell, and trains each run together with the others: accelerate
initialises torch.distributed (NCCL on GPUs, gloo on CPUs) and places each process on its own device, and
methods.trainer.DataParallel splits every batch and averages gradients once per optimizer step. Only the main
process evaluates and writes the store and the tables.
"""
from __future__ import annotations

from datetime import timedelta

from methods.trainer import DataParallel

# The others wait at a barrier while the main process evaluates a milestone; NCCL's default timeout (10 min)
# is shorter than a large model's evaluation.
BARRIER_TIMEOUT = timedelta(hours=2)


def start_data_parallel() -> DataParallel:
    from accelerate import PartialState

    state = PartialState(timeout=BARRIER_TIMEOUT)
    return DataParallel(rank=state.process_index, world_size=state.num_processes)
