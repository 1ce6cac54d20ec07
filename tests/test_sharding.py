"""Full fine-tunes sharded over processes with FSDP2 (bench/parallel.py), gloo on CPU standing in for NCCL on GPUs."""

import dataclasses
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_data_parallel import _free_port

SMALL = {"prompts_per_iter": 2, "samples_per_prompt": 2, "sample_steps": 2}
OPTIONS = {"ddpo": {"minibatch": 4}, "flow_grpo": {"minibatch": 4}, "orw_cfm_w2": {"updates_per_iter": 1}}
GRADIENT_TOLERANCE = 1e-5
"""How far the sharded step's gradient may lie from the unsharded one's, as a share of its largest entry: the shards'
reduce-scatter and the all-reduce sum the same float32 gradients in another order (measured: at most 6e-7)."""
WEIGHT_TOLERANCE = 1e-3
"""How far a weight after the sharded step may lie from the unsharded step's, as a share of the step's largest move
(about the learning rate: Adam's first step moves a weight by lr g / (|g| + eps)), over the weights whose gradient is
above SENSITIVE. Below it, Adam's step turns the gradients' last-bit differences into differences of the step's own
size (d/dg of lr g / (|g| + eps) is lr eps / (|g| + eps)^2): measured up to 9e-6 of 3e-5 on 0.15% of SD 1.5's
weights, the same numbers either way."""
SENSITIVE = 1e-6


def _join(rank: int, world_size: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)


def _trainer(method: str, model: str, parallel, sharded: bool, world):
    from bench.meter import Meter
    from bench.parallel import shard_policy
    from bench.trainers import build_trainer
    from methods import METHODS
    from worlds import REWARDS

    policy = world.make_policy(model, full_finetune=True)
    if sharded:
        shard_policy(policy, parallel)
    config = dataclasses.replace(METHODS[method].Config(), **SMALL, **OPTIONS.get(method, {}))
    reward = REWARDS["pickscore"].from_world(world)
    trainer = build_trainer(method, policy, reward, world.prompts["train"], config, 0, Meter())
    trainer.distribute(parallel)
    return trainer


def _full(parameters) -> torch.Tensor:
    """Every parameter's full value, flattened: a sharded one gathered from every process."""
    from torch.distributed.tensor import DTensor

    return torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().flatten() for p in parameters])


def _one_step(rank: int, world_size: int, port: int, method: str, model: str, out: dict) -> None:
    from bench.parallel import DataParallel
    from worlds import load_world

    _join(rank, world_size, port)
    world = load_world("scale-tiny", log=lambda *_: None)
    parallel = DataParallel(rank, world_size)
    for sharded in (False, True):
        trainer = _trainer(method, model, parallel, sharded, world)
        before = _full(trainer.policy.trainable_parameters())
        trainer.step()
        parameters = trainer.policy.trainable_parameters()
        gradients = _full([p.grad for p in parameters])
        out[sharded, rank] = (before, _full(parameters), gradients, len(trainer.gradient_norms))
    dist.destroy_process_group()


@pytest.mark.slow  # processes of their own, spawned and joined in a process group
@pytest.mark.parametrize(
    "method, model",
    [("ddpo", "sd15"), ("flow_grpo", "sd35"), ("draft", "flux"), ("orw_cfm_w2", "sd35")],
    ids=["policy-gradient", "policy-gradient-mmdit", "direct-gradient", "flow-matching"],
)
def test_one_sharded_step_is_the_unsharded_data_parallel_step(method, model):
    """Two processes, each sampling its half of the batch: FSDP2's step (each keeping half of every weight and its
    moments) moves every weight of the denoiser as the all-reduce step of the same processes does."""
    from worlds import load_world

    load_world("scale-tiny", log=lambda *_: None)  # built by one process, as the sweep's main process does
    out = mp.Manager().dict()
    mp.spawn(_one_step, args=(2, _free_port(), method, model, out), nprocs=2, join=True)
    (before, plain, gradient, steps), (sharded_before, sharded, sharded_gradient, sharded_steps) = (
        out[False, 0],
        out[True, 0],
    )
    assert steps == sharded_steps == 1  # one optimizer step: the weights' moves are Adam's first
    assert torch.equal(before, sharded_before)  # every process loaded the same weights and kept its shard of them
    moved = (plain - before).abs()
    assert (moved > 0).float().mean() > 0.5  # the step trained the denoiser itself, not only a few weights
    assert (gradient - sharded_gradient).abs().max() < GRADIENT_TOLERANCE * gradient.abs().max()
    steady = gradient.abs() > SENSITIVE
    assert steady.float().mean() > 0.5
    assert (plain - sharded)[steady].abs().max() < WEIGHT_TOLERANCE * moved.max()
    assert torch.equal(out[True, 0][1], out[True, 1][1])  # every process sees the same model


def _sharded_run(rank: int, world_size: int, port: int, store_path: str, die_at_save: int) -> None:
    """A sharded run of flow_grpo on the tiny SD3.5 twin, checkpointed after every step; with `die_at_save`, process 1
    dies in the middle of writing that save (after setting its last one aside), as a kill would leave it."""
    import time
    from pathlib import Path

    import bench.runner
    from bench.budget import Budget
    from bench.evaluate import EvalConfig
    from bench.parallel import DataParallel
    from bench.runner import RunSpec, execute
    from bench.store import Store
    from methods import METHODS
    from worlds import load_world

    _join(rank, world_size, port)
    if rank == 1 and die_at_save:
        save, saves = bench.runner.atomic_torch_save, []

        def dying_save(state, path: Path) -> None:
            saves.append(path)
            if len(saves) == die_at_save:
                path.with_name(f".{path.name}.1234.tmp").write_bytes(b"half a checkpoint")  # atomic_write_bytes' temp
                time.sleep(3)  # the other process finishes its own save of this step meanwhile
                os._exit(1)
            save(state, path)

        bench.runner.atomic_torch_save = dying_save
    spec = RunSpec(
        suite="sharded",
        world="scale-tiny",
        method="flow_grpo",
        variant="",
        model="sd35",
        method_config=dataclasses.replace(METHODS["flow_grpo"].Config(), **SMALL, **OPTIONS["flow_grpo"]),
        reward="pickscore",
        seed=0,
        budget=Budget("nfe", 400),
        milestones=(0.5, 1.0),
        eval=EvalConfig(steps=2, samples_per_prompt=2),
        sharding="fsdp2",
    )
    world = load_world("scale-tiny", log=lambda *_: None)
    parallel = DataParallel(rank, world_size)
    with Store(store_path) as store:
        status = execute(
            spec, world, store, Path(store_path).parent / "ckpt", checkpoint_every_s=0.0, parallel=parallel
        )
    parallel.barrier()
    assert status == "done"
    dist.destroy_process_group()


@pytest.mark.slow  # processes of their own, spawned and joined in a process group
def test_a_sharded_run_killed_while_saving_resumes_from_the_save_every_process_has(tmp_path):
    from bench.store import Store
    from worlds import load_world

    load_world("scale-tiny", log=lambda *_: None)
    whole, killed = tmp_path / "whole" / "store.sqlite", tmp_path / "killed" / "store.sqlite"
    for path in (whole, killed):
        path.parent.mkdir()
        Store(path).close()
    mp.spawn(_sharded_run, args=(2, _free_port(), str(whole), 0), nprocs=2, join=True)
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_sharded_run, args=(2, _free_port(), str(killed), 2), nprocs=2, join=True)
    checkpoints = killed.parent / "ckpt"
    saves = {
        path.name.split(".", 1)[1]: torch.load(path, weights_only=True)["saves"]
        for path in checkpoints.glob("*.pt*")
        if not path.name.startswith(".")
    }
    # process 0 wrote its second save; process 1 died writing it, its first set aside
    assert saves == {"rank0.pt": 2, "rank0.pt.previous": 1, "rank1.pt.previous": 1}, saves
    mp.spawn(_sharded_run, args=(2, _free_port(), str(killed), 0), nprocs=2, join=True)
    with Store(whole) as a, Store(killed) as b:
        runs, results, resumed = a.runs_frame(), a.results_frame(), b.results_frame()
        assert list(b.runs_frame()["status"]) == list(runs["status"]) == ["done"]
    # from the first save on, the resumed run trained as the whole one did: the same numbers at every milestone, to
    # float32's precision (the prompt cache encodes together the prompts a process meets first, and the text
    # encoders' outputs move in their last bits with the batch: up to 2e-7 on the tiny twin)
    columns = ["milestone", "split", "metric"]
    whole_values = results.sort_values(columns)[[*columns, "value"]].reset_index(drop=True)
    resumed_values = resumed.sort_values(columns)[[*columns, "value"]].reset_index(drop=True)
    assert whole_values[columns].equals(resumed_values[columns]) and len(whole_values) == 12
    # every process resumed from the same step (the agreed save): the budget each milestone was recorded at
    assert sorted(results["nfe"].unique()) == sorted(resumed["nfe"].unique())
    assert torch.allclose(torch.tensor(whole_values["value"]), torch.tensor(resumed_values["value"]), rtol=1e-5)
    assert not list(checkpoints.glob("[!.]*"))  # every process removed its checkpoints
    assert json.loads(runs["config_json"].iloc[0])["sharding"] == "fsdp2"  # a full fine-tune: a run of its own


@pytest.fixture(scope="module")
def world():
    from worlds import load_world

    return load_world("scale-tiny", log=lambda *_: None)


@pytest.mark.parametrize("model", ["sd15", "sd35", "flux"])
def test_a_full_fine_tune_trains_every_denoiser_weight_against_the_base_model_as_reference(world, model):
    from bench.meter import Meter, MeteredPolicy
    from models.sampler import Sampler

    policy = world.make_policy(model, full_finetune=True)
    lora = world.make_policy(model)
    trained = policy.trainable_parameters()
    assert len(trained) == len(list(policy.backbone.parameters())) > len(lora.trainable_parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in trained)
    meter = Meter()
    metered = MeteredPolicy(policy, meter)
    reference = metered.frozen_copy()
    assert reference.trainable_parameters() == [] and reference.network is not policy.network
    prompts = world.prompts["train"][:2]
    with torch.no_grad():
        trajectory = metered.sample(prompts, 2, torch.Generator().manual_seed(0), Sampler(noise=1.0))
        # the reference computes as the policy does: at equal weights, the same numbers
        assert torch.equal(reference.step_mean(trajectory, 0), metered.step_mean(trajectory, 0))
        for p in trained:
            p.add_(0.01 * torch.randn_like(p))
        before = meter.usage.nfe
        base_mean, moved_mean = reference.step_mean(trajectory, 0), metered.step_mean(trajectory, 0)
    assert meter.usage.nfe > before + len(prompts)  # the reference's network is watched: its calls count too
    assert (base_mean - trajectory.means[:, 0]).abs().max() < 1e-5  # the reference stayed the base model
    assert (moved_mean - base_mean).abs().max() > 1e-3  # the policy moved away from it
    state = policy.state_dict()
    fresh = world.make_policy(model, full_finetune=True)
    fresh.load_state_dict(state)
    reference.load_state_dict(state)  # a reference reset to the current policy (GARDO's)
    with torch.no_grad():
        assert torch.equal(fresh.step_mean(trajectory, 0), moved_mean)
        assert torch.equal(reference.step_mean(trajectory, 0), moved_mean)
    assert reference.trainable_parameters() == []


@pytest.mark.parametrize("model", ["sd15", "sd35"])
def test_a_lora_reference_is_the_base_model_until_it_is_set_to_the_policys_weights(world, model):
    """GARDO resets its reference to the current policy: a LoRA policy's reference (the shared modules) takes an
    adapter of its own, which no optimizer step moves and no gradient reaches."""
    from models.sampler import Sampler

    policy = world.make_policy(model)
    reference = policy.frozen_copy()
    assert reference.state_dict() == {} and reference.trainable_parameters() == []
    trained = policy.trainable_parameters()
    prompts = world.prompts["train"][:2]
    with torch.no_grad():
        trajectory = policy.sample(prompts, 2, torch.Generator().manual_seed(0), Sampler(noise=1.0))
        base = policy.step_mean(trajectory, 0)
        for p in trained:
            p.add_(0.05 * torch.randn_like(p))
        moved = policy.step_mean(trajectory, 0)
        assert torch.equal(reference.step_mean(trajectory, 0), base) and (moved - base).abs().max() > 1e-4
        reference.load_state_dict(policy.state_dict())
        assert torch.equal(reference.step_mean(trajectory, 0), moved)  # now the policy as it was when reset
        for p in trained:
            p.add_(0.05 * torch.randn_like(p))
        assert torch.equal(reference.step_mean(trajectory, 0), moved)  # and it stays so as the policy moves on
    assert reference.trainable_parameters() == [] and policy.trainable_parameters() == trained
    assert all(p.requires_grad for p in trained)
    assert not any(p.requires_grad for _, p in reference._trained)
    loss = policy.step_mean(trajectory, 0).square().mean() + reference.step_mean(trajectory, 0).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in trained) and all(p.grad is None for _, p in reference._trained)
    saved = reference.state_dict()
    again = world.make_policy(model).frozen_copy()
    again.load_state_dict(saved)  # a resumed run's reference
    with torch.no_grad():
        assert torch.equal(again.step_mean(trajectory, 0), moved)


def test_only_a_full_fine_tune_shards(world):
    with pytest.raises(ValueError, match="use finetune='full'"):
        world.make_policy("sd15").shard(lambda module, dtype: None)


def test_a_sharded_sweep_writes_a_store_and_tables_of_its_own():
    from bench.cli import build_parser
    from bench.commands import _store, suite_from_args

    for smoke, name in ((True, "nightly-gpu-smoke"), (False, "nightly-gpu")):
        argv = ["run", "--suite", "nightly-gpu", *(["--smoke"] * smoke)]
        plain = build_parser().parse_args(argv)
        sharded = build_parser().parse_args([*argv, "--sharding", "fsdp2"])
        assert _store(plain, suite_from_args(plain)).parent.name == name
        suite = suite_from_args(sharded)
        assert suite.sharding == "fsdp2" and _store(sharded, suite).parent.name == f"{name}-fsdp2"


def test_a_sharded_run_is_a_run_of_its_own_and_the_base_model_is_the_same(world):
    from bench.experiments import build_suite
    from bench.sweep import specs

    suite = build_suite("nightly-gpu", smoke=True)
    plain = specs(suite)[0]
    sharded = dataclasses.replace(plain, sharding="fsdp2")
    assert "sharding" not in plain.config_dict()  # the run ids of unsharded runs stay as they were
    assert sharded.run_id(world.model_hash(plain.model)) != plain.run_id(world.model_hash(plain.model))


def test_a_checkpoints_shards_round_trip_as_tensors(tmp_path):
    """What a process saves of its shards is plain tensors and lists (what load_checkpoint's weights_only reads), and
    comes back as the same DTensors."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from bench.parallel import local_shards, sharded

    _join(0, 1, _free_port())
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = distribute_tensor(torch.randn(5, 3), mesh, [Shard(0)])
        state = {
            "policy": {"w": weight},
            "optimizer": {"state": {0: {"exp_avg": weight * 2, "step": torch.tensor(1.0)}}},
        }
        path = tmp_path / "shard.pt"
        torch.save(local_shards(state), path)
        back = sharded(torch.load(path, weights_only=True), mesh)
        assert isinstance(back["policy"]["w"], DTensor) and torch.equal(
            back["policy"]["w"].full_tensor(), weight.full_tensor()
        )
        assert torch.equal(back["optimizer"]["state"][0]["exp_avg"].to_local(), (weight * 2).to_local())
        assert torch.equal(back["optimizer"]["state"][0]["step"], torch.tensor(1.0))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # processes of their own, started by torchrun
def test_the_command_line_shards_a_full_fine_tune_over_the_launched_processes(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from bench.store import Store
    from worlds import load_world

    load_world("scale-tiny", log=lambda *_: None)  # built once, before the processes start
    store = tmp_path / "store.sqlite"
    launcher = Path(sys.executable).with_name("torchrun")
    command = [
        *(str(launcher), "--nproc_per_node", "2", "--master_port", str(_free_port())),
        *("-m", "bench", "run", "--suite", "nightly-gpu", "--smoke", "--method", "flow_grpo@sd35"),
        *("--reward", "pickscore", "--sharding", "fsdp2", "--store", str(store), "--progress", "never"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert "1 runs, 1 done" in done.stdout, done.stdout + done.stderr
    with Store(store) as s:
        runs, results = s.runs_frame(), s.results_frame()
    assert json.loads(runs["config_json"].iloc[0])["sharding"] == "fsdp2"
    assert set(results["split"]) == {"eval_seen", "eval_unseen"}  # evaluated by both processes, recorded by one
