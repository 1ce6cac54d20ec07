"""Data-parallel training of one run over processes (gloo on CPU stands in for NCCL on GPUs)."""

import dataclasses
import functools
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench.parallel import DataParallel

SMALL = {"prompts_per_iter": 4, "samples_per_prompt": 2, "sample_steps": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world_size: int, port: int, method: str, model: str, out: dict) -> None:
    from bench.meter import Meter
    from bench.trainers import build_trainer
    from methods import METHODS
    from worlds import REWARDS, WORLDS, load_world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    scale = model in WORLDS["scale"].models
    world = load_world("scale-tiny" if scale else "digits-tiny", log=lambda *_: None)
    meter = Meter()
    options = {**SMALL, **({"minibatch": 4} if method in ("ddpo", "sas") else {})}
    trainer = build_trainer(
        method,
        world.make_policy(model),
        REWARDS["pickscore" if scale else "digit"].from_world(world),
        world.prompts["train"],
        dataclasses.replace(METHODS[method].Config(), **options),
        0,
        meter,
    )
    trainer.distribute(DataParallel(rank, world_size))
    trainer.step()
    out[rank] = (
        torch.cat([p.detach().flatten() for p in trainer.policy.trainable_parameters()]),
        meter.accounts["train"].samples,
    )
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "method, model",
    [
        ("ddpo", "diffusion"),
        ("raft", "diffusion"),
        ("sas", "diffusion"),
        ("orw_cfm_w2", "flow"),
        ("ddpo", "sd15"),
        ("rocm", "lcm"),
    ],
)
@pytest.mark.slow  # processes of their own, spawned and joined in a process group
def test_processes_split_the_batch_and_stay_identical(method, model):
    from worlds import load_world

    load_world("scale-tiny", log=lambda *_: None)  # built by one process, as the sweep's main process does
    out = mp.Manager().dict()
    mp.spawn(_train, args=(2, _free_port(), method, model, out), nprocs=2, join=True)
    (params0, samples0), (params1, samples1) = out[0], out[1]
    assert torch.equal(params0, params1)  # gradients averaged once per step: the same update everywhere
    assert (
        samples0 == samples1 == SMALL["prompts_per_iter"] * SMALL["samples_per_prompt"] / 2
    )  # the config's batch in all


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="use a multiple of 3"):
        DataParallel(0, 3).share(8, "ddpo.prompts_per_iter")


def test_methods_collecting_feedback_once_refuse_to_run_data_parallel(tiny_world):
    from bench.meter import Meter
    from bench.trainers import build_trainer
    from methods import METHODS
    from rewards.feedback import Feedback
    from worlds import REWARDS

    policy, reward = tiny_world.make_policy("diffusion"), REWARDS["digit"].from_world(tiny_world)
    annotator = functools.partial(Feedback.from_world, tiny_world, reward, base_policy=policy)
    trainer = build_trainer(
        "aihf", policy, reward, tiny_world.prompts["train"], METHODS["aihf"].Config(), 0, Meter(), annotator
    )
    with pytest.raises(ValueError, match="cannot run data-parallel"):
        trainer.distribute(DataParallel(0, 2))


class Failing(torch.nn.Module):
    def forward(self, images):
        return 1 / 0


def _run(rank: int, world_size: int, port: int, store_path: str, failing_rank: int | None = None) -> None:
    from bench.budget import Budget
    from bench.evaluate import EvalConfig
    from bench.runner import RunSpec, execute
    from bench.store import Store
    from methods import METHODS
    from worlds import load_world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    spec = RunSpec(
        suite="dp",
        world="digits-tiny",
        method="ddpo",
        variant="",
        model="diffusion",
        method_config=dataclasses.replace(METHODS["ddpo"].Config(), minibatch=4, **SMALL),
        reward="digit",
        seed=0,
        budget=Budget("samples", 32),
        milestones=(0.5, 1.0),
        eval=EvalConfig(steps=3),
    )
    world = load_world("digits-tiny", log=lambda *_: None)
    if rank == failing_rank:  # this process fails in its first step, while the other waits for its gradients
        world.reward_classifier = Failing()
    parallel = DataParallel(rank, world_size)
    with Store(store_path) as store:
        status = execute(spec, world, store, store.path.parent / "ckpt", log=lambda *_: None, parallel=parallel)
    parallel.barrier()  # as the sweep's next run would start
    assert status == "done"
    dist.destroy_process_group()


@pytest.mark.slow  # processes of their own, spawned and joined in a process group
def test_a_data_parallel_run_counts_every_process_and_only_the_main_one_writes(tmp_path):
    from bench.store import Store

    store_path = tmp_path / "store.sqlite"
    Store(store_path).close()
    mp.spawn(_run, args=(2, _free_port(), str(store_path)), nprocs=2, join=True)
    with Store(store_path) as store:
        runs, results, trace = store.runs_frame(), store.results_frame(), store.diagnostics_frame()
    assert list(runs["status"]) == ["done"]
    # the trace counts every process's NFE, as the milestones do
    assert trace.groupby("milestone")["nfe"].max().tolist() == sorted(results.drop_duplicates("milestone")["nfe"])
    # 8 samples an iteration over both processes: milestones at 16 and 32 samples, whoever sampled them
    assert sorted(results.drop_duplicates("milestone")["samples"]) == [16.0, 32.0]
    assert not list((tmp_path / "ckpt").glob("*.pt"))  # every process removed its checkpoint


@pytest.mark.slow  # processes of their own, spawned and joined in a process group
@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_process_that_fails_ends_the_run_instead_of_leaving_the_others_waiting(tmp_path, failing_rank):
    from bench.store import Store

    store_path = tmp_path / "store.sqlite"
    Store(store_path).close()
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="ZeroDivisionError"):
        mp.spawn(_run, args=(2, _free_port(), str(store_path), failing_rank), nprocs=2, join=True)
    assert time.monotonic() - start < 120  # not the collectives' timeout
    with Store(store_path) as store:
        status = list(store.runs_frame()["status"])
    # only the main process writes: it records its own failure, and another's when its collective breaks off before
    # the launcher stops it
    assert status == ["failed"] if failing_rank == 0 else status in (["failed"], ["running"])


def test_a_data_parallel_sweep_leaves_the_methods_that_cannot_split_to_a_single_process(tiny_world, tmp_path):
    from bench.budget import Budget
    from bench.evaluate import EvalConfig
    from bench.runner import RunSpec, execute
    from bench.store import Store
    from methods import METHODS

    spec = RunSpec(
        suite="dp",
        world="digits-tiny",
        method="aihf",
        variant="",
        model="diffusion",
        method_config=METHODS["aihf"].Config(),
        reward="gold",
        seed=0,
        budget=Budget("samples", 32),
        milestones=(1.0,),
        eval=EvalConfig(steps=3),
    )
    lines = []
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path, log=lines.append, parallel=DataParallel(0, 2)) == "n/a"
        assert store.runs_frame().empty  # nothing recorded: a single-process run of the same suite runs it
    assert "run it without accelerate launch" in lines[-1]


@pytest.mark.slow  # processes of their own, spawned and joined in a process group
def test_the_command_line_under_a_launcher_trains_each_run_in_every_process(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from bench.store import Store
    from worlds import load_world

    load_world("scale-tiny", log=lambda *_: None)  # built once, before the processes start
    store = tmp_path / "store.sqlite"
    launcher = Path(sys.executable).with_name("torchrun")  # what `accelerate launch` also does: the env:// group
    command = [
        str(launcher),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "bench",
        "run",
        "--suite",
        "nightly-gpu",
        "--smoke",
        "--method",
        "ddpo@sd15,aihf",
        "--reward",
        "pickscore",
        "--store",
        str(store),
        "--progress",
        "never",
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1]
    ).stdout
    assert out.count("runs,") == 1 and "2 runs, 1 done, 1 n/a, 0 failed" in out, out  # one report, by the main process
    assert out.count("not run data-parallel") == 1
    with Store(store) as s:
        runs = s.runs_frame()
    assert list(runs["method"]) == ["ddpo"] and list(runs["status"]) == ["done"]
