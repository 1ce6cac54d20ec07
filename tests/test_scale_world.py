"""The scale world on its tiny twin (random-initialised models of the real diffusers and transformers classes,
saved with save_pretrained and loaded back): one training step of every method x diffusers family pairing, its
evaluation metrics, its identity, the suite's validation, and the nightly GPU suite end to end at --smoke size."""

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.budget import Budget
from bench.cli import main
from bench.diagnostics import FIRST_PASS_TOLERANCE
from bench.experiments import Suite, build_suite
from bench.experiments.suite import parse_entry, validate
from bench.meter import Meter
from bench.throughput.counting import host_reads_of_meta_tensors
from bench.trainers import build_trainer
from methods import METHODS
from methods.toolkit.policy_gradient import STEPS_PER_CALL, PolicyGradientOptions, RatioClip, ppo_chain_backward
from models.sampler import Sampler
from models.scale.config import DTYPES, DiffusersConfig
from rewards.feedback import Feedback
from rewards.learned import PromptRewardModel
from worlds import REWARDS, WORLDS, model_family
from worlds.scale import (
    DEMONSTRATION_CANDIDATES,
    DEMONSTRATION_SEED,
    POLICIES,
    SCALE,
    SCALE_TINY,
    ScaleWorld,
    weights_fingerprint,
)

SMOKE = build_suite("nightly-gpu", smoke=True)
"""Its tiny configs (a step well under a second) are the ones every test here trains with."""
# every pairing of a method with a scale generator of a family it supports
PAIRS = [
    (name, model)
    for name in METHODS
    for model in tuple(WORLDS["scale"].models)
    if model_family(model) in METHODS[name].families
]
# The fast run trains every pairing on one model of each family (SD 1.5, the LCM, SD3.5); the slow run adds the other
# flow models (SD3, FLUX), whose classes the flow pairings share.
FAST_MODELS = ("sd15", "lcm", "sd35")
GRID = [pytest.param(name, model, marks=() if model in FAST_MODELS else pytest.mark.slow) for name, model in PAIRS]


@pytest.fixture(scope="module")
def world():
    from worlds import load_world

    return load_world("scale-tiny", log=lambda *_: None)


def make(world, name, model, reward="pickscore", policy=None, raw_reward=None):
    meter = Meter()
    config = SMOKE.method_config(name)
    policy = policy or world.make_policy(model)
    raw_reward = raw_reward or REWARDS[reward].from_world(world)
    annotator = functools.partial(Feedback.from_world, world, raw_reward, base_policy=policy)
    return build_trainer(name, policy, raw_reward, world.prompts["train"], config, 0, meter, annotator), meter


def test_every_family_has_a_model_in_both_scale_worlds_and_every_method_a_pairing():
    assert {model_family(m) for m in tuple(WORLDS["scale"].models)} == {"diffusion", "consistency", "flow"}
    assert tuple(WORLDS["scale"].models) == tuple(WORLDS["scale-tiny"].models)
    assert set(WORLDS["scale"].rewards) == {"aesthetic", "pickscore", "clip_score", "imagereward", "hpsv2", "jpeg"}
    assert set(WORLDS["scale-tiny"].rewards) < set(WORLDS["scale"].rewards)
    assert {name for name, _ in PAIRS} == set(METHODS)


@pytest.mark.parametrize("name, model", GRID)
def test_one_step_of_every_pairing_is_finite_and_trains_only_lora(world, name, model):
    trainer, meter = make(world, name, model)
    if not trainer.trains:
        images = trainer.generate(
            world.prompts["eval_unseen"][:2], 3, torch.Generator().manual_seed(0), Budget("nfe", 100)
        )
        assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
        return
    policy = trainer.policy
    lora = {n: p.detach().clone() for n, p in policy.state_dict().items()}
    frozen = [p.detach().clone() for p in policy.backbone.parameters() if not p.requires_grad][:4]
    stats = trainer.step()
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert any(not torch.equal(lora[n], p) for n, p in policy.state_dict().items()), "no LoRA weight moved"
    assert all(
        torch.equal(a, b) for a, b in zip(frozen, [p for p in policy.backbone.parameters() if not p.requires_grad][:4])
    )
    usage = meter.accounts["train"]
    # feedback methods never query the reward: they count labels (sft: only its demonstrations, no query at all)
    queries = usage.labels if METHODS[name].learns_from_feedback else usage.reward_queries
    assert usage.nfe > 0 and (queries > 0 or name == "sft")


class Brightness:
    """A differentiable reward with no network of its own: the meta device runs the policy, not CLIP's internals."""

    name, version, differentiable, higher_is_better = "brightness", "1", True, True

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("name, model", GRID)
def test_a_step_on_an_accelerator_keeps_every_tensor_on_its_device(world, name, model):
    config = dataclasses.replace(world.model_config(model), device="meta")
    with host_reads_of_meta_tensors():
        policy = POLICIES[type(config)].from_pretrained(config=config)
        trainer, _ = make(world, name, model, policy=policy, raw_reward=Brightness())
        if trainer.trains:
            trainer.step()
        images = trainer.generate(["a cat", "a dog"], 3, torch.Generator().manual_seed(0), Budget("nfe", 100))
    assert images.is_meta and images.shape == (2, 3, 16, 16)


@pytest.mark.slow  # every trained pairing, over a minute together on 2 cores (make test-all runs it)
@pytest.mark.parametrize("name, model", [pair for pair in GRID if METHODS[pair.values[0]].trains])
def test_a_bf16_step_trains_float32_lora_weights(world, monkeypatch, name, model):
    """The mixed precision a GPU runs (frozen weights in bf16 under autocast, LoRA in float32), here on the CPU's
    bf16 kernels: the dtypes must meet, and the step must stay finite."""
    monkeypatch.setattr(DiffusersConfig, "weight_dtype", lambda self: torch.bfloat16)
    trainer, _ = make(world, name, model)
    policy = trainer.policy
    assert {p.dtype for p in policy.backbone.parameters() if not p.requires_grad} == {torch.bfloat16}
    before = {n: p.detach().clone() for n, p in policy.state_dict().items()}
    stats = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert {p.dtype for p in policy.trainable_parameters()} == {torch.float32}
    assert any(not torch.equal(before[n], p) for n, p in policy.state_dict().items())


@pytest.mark.parametrize("reward", sorted(SCALE_TINY.rewards))
def test_the_world_scores_images_with_every_reward_it_offers(world, reward):
    prompts = [p for p in world.prompts["eval_unseen"][:3] for _ in range(2)]
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    metrics = world.score_images(images, prompts, 2, REWARDS[reward].from_world(world))
    assert set(metrics) == set(world.metrics) == {"reward", "clip_score", "diversity"}
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()) and metrics["diversity"] > 0
    same = world.score_images(images[[0, 0, 2, 2, 4, 4]], prompts, 2, REWARDS[reward].from_world(world))
    assert same["diversity"] == pytest.approx(0, abs=1e-5)  # identical images of a prompt are not diverse


def test_the_model_hash_names_the_weights_and_the_config(world, tmp_path):
    assert world.model_hash("sd15") == world.model_hash("sd15") != world.model_hash("lcm")
    lower_rank = dataclasses.replace(
        SCALE_TINY, models={**SCALE_TINY.models, "sd15": dataclasses.replace(SCALE_TINY.models["sd15"], lora_rank=2)}
    )
    assert ScaleWorld("scale-tiny", lower_rank, world.directory).model_hash("sd15") != world.model_hash("sd15")
    # a hub snapshot is named by its commit; a local directory by its weights' contents
    snapshot = tmp_path / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    assert weights_fingerprint(snapshot) != weights_fingerprint(world.directory / "sd")


def test_a_hub_checkpoint_missing_offline_fails_naming_the_download(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine holds
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="hf download stable-diffusion-v1-5/stable-diffusion-v1-5"):
        ScaleWorld("scale", SCALE, None).make_policy("sd15")
    with pytest.raises(SystemExit) as exit:  # the nightly run's preflight
        main(["models", "--world", "scale"])
    error = capsys.readouterr().err
    assert exit.value.code == 1 and len(error.strip().splitlines()) == 1 and "hf download stable-diff" in error


def test_suites_are_checked_against_their_world():
    with pytest.raises(ValueError, match="unknown model 'sd15'; valid: diffusion, consistency, flow"):
        parse_entry("ddpo@sd15", world="digits")
    with pytest.raises(ValueError, match="unknown model 'flow'; valid: sd15, lcm, sd3"):
        parse_entry("ddpo@flow", world="scale")
    assert parse_entry("rocm", world="scale") == ("rocm", "", "lcm")
    with pytest.raises(ValueError, match="world 'scale' offers no 'digit' reward; valid: aesthetic, pickscore"):
        validate(Suite("x", methods=("ddpo@sd15",), rewards=("digit",), world="scale"))
    with pytest.raises(ValueError, match="world 'digits' offers no 'pickscore' reward; valid: digit, compress, gold"):
        validate(Suite("x", methods=("ddpo",), rewards=("pickscore",)))
    with pytest.raises(ValueError, match="has no --smoke size; suites with one: pg-diagnostics, scenes, nightly-gpu"):
        build_suite("default", smoke=True)


@pytest.mark.slow  # over 10 s on 2 cores (make test-all runs it)
def test_the_annotator_demonstrates_the_best_of_the_base_models_samples_of_each_prompt(world):
    reward = REWARDS["pickscore"].from_world(world)
    policy = world.make_policy("sd15")
    images, prompts = world.demonstrations(reward, 0.5, policy)
    train = world.prompts["train"]
    assert images.shape == (2 * len(train), 3, 16, 16) and prompts == [p for p in train for _ in range(2)]
    # every demonstration beats the candidates of its prompt that were left out
    candidates = [p for p in train for _ in range(DEMONSTRATION_CANDIDATES)]
    with torch.no_grad():
        pool = policy.sample(
            candidates, SCALE_TINY.demonstration_steps, torch.Generator().manual_seed(DEMONSTRATION_SEED)
        ).images
        scores = reward(pool, candidates).view(len(train), -1).sort(dim=1, descending=True).values
        kept = reward(images, prompts).view(len(train), 2)
    torch.testing.assert_close(kept, scores[:, :2], atol=1e-4, rtol=1e-4)
    assert Feedback.from_world(world, reward, Meter(), policy).reward_model is PromptRewardModel


def test_the_nightly_suite_and_its_smoke_twin_are_the_same_grid():
    full, smoke = build_suite("nightly-gpu"), build_suite("nightly-gpu", smoke=True)
    assert validate(full).world == "scale" and validate(smoke).world == "scale-tiny"
    assert full.methods == smoke.methods and full.rewards == smoke.rewards
    assert {name for name, _ in PAIRS} == {e.partition("@")[0] for e in full.methods}


@pytest.mark.slow
def test_nightly_gpu_smoke_end_to_end(tmp_path, capsys):
    store = tmp_path / "nightly-gpu-smoke" / "store.sqlite"
    assert main(["run", "--suite", "nightly-gpu", "--smoke", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    entries = build_suite("nightly-gpu").methods
    runs = len(entries) * 2
    # the methods that need reward gradients cannot use jpeg
    refused = sum(METHODS[entry.partition("@")[0]].needs_differentiable_reward for entry in entries)
    assert refused == 7 and f"{runs} runs, {runs - refused} done, {refused} n/a, 0 failed" in out
    board = (store.parent / "leaderboard.md").read_text()
    for text in (
        "| ddpo | sd15 |",
        "| rocm | lcm |",
        "| orw_cfm_w2 | sd35 |",
        "clip_score ↑",
        "Reward: pickscore",
        "Reward: jpeg",
    ):
        assert text in board, text
    assert main(["leaderboard", "--suite", "nightly-gpu", "--smoke", "--store", str(store)]) == 0


@pytest.mark.slow
def test_the_throughput_benchmark_measures_every_training_method_on_every_family(capsys):
    status = main(["throughput", "--size", "tiny", "--sample-steps", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert status == 0 and "failed" not in out, out
    for name, model in PAIRS:
        assert (f"| {model} | {name} |" in out) == METHODS[name].trains, (name, model)


@pytest.mark.slow
def test_the_cpu_benchmark_times_every_leaderboard_entry_of_the_embedded_worlds(capsys):
    """Every training entry of the digits and scenes leaderboards gets a rate, or the reason it has none; a
    policy-gradient method's at one step a call and at its default."""
    from bench.experiments import build_suite
    from bench.throughput.cpu import CPU_METHODS

    assert main(["cpu-throughput", "--steps", "1"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith(("digits ", "scenes ")):
            world, method, model, _, per_call, *rest = line.split()
            rows.setdefault((world, method, model), []).append((per_call, rest))
    for suite in ("default", "scenes"):
        entries = build_suite(suite)
        for method, variant, model in entries.entries():
            if variant or method not in CPU_METHODS:
                continue
            measured = rows.pop((entries.world, method, model))
            if measured[0][1][0] == "n/a:":
                assert "differentiable" in " ".join(measured[0][1]) and len(measured) == 1
            elif issubclass(METHODS[method].Config, PolicyGradientOptions):
                assert [per_call for per_call, _ in measured] == ["1", str(STEPS_PER_CALL)]
            else:
                assert [per_call for per_call, _ in measured] == ["-"]
            assert all(float(rest[2]) > 0 for _, rest in measured if rest[0] != "n/a:")  # GFLOP/s
    assert not rows  # nothing but the leaderboards' entries


@pytest.mark.slow  # over 10 s on 2 cores (make test-all runs it)
def test_the_trl_comparisons_pipeline_is_the_985k_unet_at_32_px_and_our_side_prints_each_timed_step(tmp_path, capsys):
    from bench.throughput.cpu import OURS, time_ours, write_sd_pipeline
    from models.scale.config import StableDiffusionConfig
    from models.scale.unet import StableDiffusionPolicy

    pipeline = write_sd_pipeline(tmp_path)
    assert (pipeline / "tokenizer" / "vocab.json").is_file()  # trl's transformers 4 reads the slow tokenizer's files
    config = StableDiffusionConfig(source=str(pipeline), resolution=32, min_vocab=0)
    policy = StableDiffusionPolicy.from_pretrained(pipeline, config=config)
    assert policy.latent_shape == (4, 16, 16) and policy.image_shape == (3, 32, 32)
    assert sum(p.numel() for p in policy.backbone.parameters() if not p.requires_grad) == 985_444
    flops = {}
    for side in OURS:
        time_ours(str(pipeline), 1, side)
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["samples"] == 16 and len(result["seconds"]) == 1 and result["seconds"][0] > 0
        memory = result["memory"]
        assert memory["peak_mb"] >= memory["loaded_mb"] > 100 and memory["steps_mb"] >= 0
        flops[side] = result["flops"]
    # batching moves no arithmetic but a few per-call operations (measured 0.02%, 0.07%); reusing the sampling pass
    # saves the re-evaluation's forward, a third of the step (measured 0.676 of it)
    reevaluating, one_a_call, reusing, by_group = flops.values()
    assert one_a_call == pytest.approx(reevaluating, rel=1e-3) and by_group == pytest.approx(reusing, rel=1e-3)
    assert 0.6 < reusing / reevaluating < 0.7


def test_the_memory_both_sides_report_counts_what_the_steps_hold():
    from bench.throughput.trl_ddpo import memory, resident_mb

    loaded = resident_mb()
    held = torch.ones(256 * 2**20 // 4)  # 256 MB, written (so resident)
    assert resident_mb() > loaded + 250 and memory(loaded)["steps_mb"] > 250  # the kernel's mark may lag by a page
    # a process started from this one reports its own peak, not this one's (getrusage's ru_maxrss would)
    child = "from bench.throughput.trl_ddpo import memory, resident_mb; print(memory(resident_mb())['peak_mb'])"
    root = Path(__file__).resolve().parents[1]
    started = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True, cwd=root)
    assert float(started.stdout) < resident_mb() - 200
    del held


def test_both_sides_count_the_products_of_fused_attention():
    from bench.throughput.trl_ddpo import count_flops

    batch, heads, queries, keys, width = 2, 3, 16, 8, 4
    q, k, v = (torch.randn(batch, heads, n, width) for n in (queries, keys, keys))
    # q k^T and its weights times v: 2 * b h l s d FLOPs each
    product = 2 * batch * heads * queries * keys * width
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * product


def test_the_backward_flops_of_a_rocm_step_are_counted():
    from bench.throughput.timing import measure

    result = measure("lcm", "rocm", size="tiny", sample_steps=2, repeats=1)
    small = METHODS["rocm"].small_config  # the nightly smoke twin's size
    assert result.images_per_step == small["prompts_per_iter"] * small["samples_per_prompt"]
    assert result.seconds_per_step > 0 and result.backward_tflops > 0
    assert result.peak_gib is None and result.mfu is None  # a CPU has neither
    counted = measure("lcm", "rocm", size="tiny", sample_steps=2, device="meta")  # counts without computing
    # the same ops but attention's: the meta device and the CPU pick different attention kernels to count
    assert counted.backward_flops == pytest.approx(result.backward_flops, rel=0.05)
    assert counted.seconds_per_step is None


def test_live_memory_counts_the_tensors_alive_and_their_peak_exactly():
    from bench.throughput.counting import LiveMemory

    device = torch.device("meta")
    kept = torch.empty(1000, device=device)  # 4,000 bytes alive before: counted from the start
    with LiveMemory(device) as memory:
        start = memory.current
        assert start >= kept.nbytes
        a = torch.ones(250, device=device)  # 1,000 bytes
        b = a * 2  # 1,000 more
        view = b[:10]  # a view: no new storage
        del a, b
        assert memory.current == start + 40 * 25  # the view keeps b's storage alive
        del view
        x = torch.zeros(10, 10, device=device, requires_grad=True)
        (x * x).sum().backward()  # x * x saves x only; the gradient stays
        assert memory.current == start + 2 * 400
    assert memory.peak - start == 2000  # a and b together; the backward's temporaries stayed under it


@pytest.mark.slow  # two meta-device steps each way: over 10 s on 2 cores
def test_a_full_fine_tunes_peak_memory_is_measured_on_the_meta_device_and_computed_sharded():
    from bench.throughput.timing import measure

    lora = measure("sd35", "flow_grpo", size="tiny", sample_steps=2, device="meta")
    full = measure("sd35", "flow_grpo", size="tiny", sample_steps=2, device="meta", finetune="full", shards=4)
    assert lora.peak_gib and full.peak_gib and full.peak_gib > lora.peak_gib  # float32 weights, moments, the reference
    assert lora.sharded_peak_gib is None and full.sharded_peak_gib and full.sharded_peak_gib < full.peak_gib
    import torch.distributed as dist

    try:  # off the meta device, sharded with FSDP2 in a process group of one, as `bench run --sharding fsdp2` on a GPU
        timed = measure("sd35", "flow_grpo", size="tiny", sample_steps=2, repeats=1, finetune="full")
        assert timed.seconds_per_step > 0 and timed.backward_flops > 0 and dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_of_ones_own_replaces_a_model_and_names_a_new_base(world, tmp_path):
    import shutil

    from bench.cli import build_parser
    from bench.commands import suite_from_args
    from bench.sweep import specs

    mine = str(shutil.copytree(world.directory / "sd", tmp_path / "my-sd"))
    before = world.model_hash("sd15")
    assert world.model_config("sd15", mine).source == mine and world.make_policy("sd15", mine).image_shape == (
        3,
        16,
        16,
    )
    assert world.model_hash("sd15", mine) != before and world.model_hash("sd15") == before
    # the command line's --source reaches every run of that model through its RunSpec
    args = build_parser().parse_args(["run", "--suite", "nightly-gpu", "--smoke", "--source", f"sd15={mine}"])
    sources = {(spec.model, spec.source) for spec in specs(suite_from_args(args))}
    assert ("sd15", mine) in sources and ("lcm", "") in sources and all(s in ("", mine) for _, s in sources)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["run", "--source", "sdxl=/x"],
            "expected MODEL=SOURCE with MODEL in sd15, lcm, sd3, sd35, flux, got 'sdxl=/x'",
        ),
        (
            ["run", "--source", "sd15=/x"],
            "--source replaces a scale world's checkpoints; suite 'default' runs in world",
        ),
    ],
)
def test_bad_sources_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and message in error, error


def test_the_real_size_architectures_have_the_published_parameter_counts():
    from bench.throughput.architectures import clip_text, flux_transformer, mmdit, unet, vae

    def count(module):
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):  # shapes only: nothing is allocated
        assert count(unet("real", guidance_embedding=False)) == 859_520_964  # SD 1.5's UNet
        assert count(vae("real", 4)) == 83_653_863  # SD 1.x's VAE
        assert count(clip_text("real", 768, 12, 12)) == 123_060_480  # CLIP ViT-L/14's text encoder
        assert count(clip_text("real", 1280, 32, 20, projection=1280)) == 694_659_840  # OpenCLIP bigG's, SD3's second
        assert count(mmdit("real")) == 2_028_328_000  # SD3-medium's MMDiT
        sd35 = mmdit("real", mmdit_x=True)
        assert count(sd35) == 2_243_171_520  # SD3.5-medium's MMDiT-X
        # the published 2.5B counts the position-embedding table the checkpoint stores (a buffer here)
        assert count(sd35) + sd35.pos_embed.pos_embed.numel() == 2_469_663_936
        assert count(flux_transformer("real")) == 11_901_408_320  # FLUX.1-dev's transformer: the published 11.9B


@pytest.mark.parametrize("model, dynamics", [("sd15", "ddim"), ("sd35", "flow-sde")])
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_first_pass_reevaluated_in_other_batches_stays_within_tolerance_of_1_in_bf16(
    world, monkeypatch, model, dynamics, precision
):
    """The frozen weights and the network's autocast in bfloat16, as on a GPU (DiffusersConfig.weight_dtype keeps the
    CPU in float32 otherwise); the network's output, the sampler's means and latents, and the log-probabilities in
    float32. Re-evaluated in other batches than the sampling pass's (a minibatch of the chains, several steps to a
    network call), the first pass's ratio stays within the diagnostics' tolerance of 1: the two passes share their
    numerics. (CPU kernels measured here: bfloat16 exactly 1, float32 within 5e-4 where a call holds several steps.)"""
    monkeypatch.setattr(DiffusersConfig, "weight_dtype", lambda self: DTYPES[precision])
    policy = world.make_policy(model)
    assert policy._autocast_dtype == (None if precision == "float32" else torch.bfloat16)
    with torch.no_grad():
        chain = policy.sample(world.prompts["train"][:4], 4, torch.Generator().manual_seed(0), Sampler(dynamics, 0.7))
    assert chain.latents.dtype == chain.log_probs.dtype == torch.float32
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for index, chunk in ((torch.arange(4), 3), (torch.arange(2), 1), (torch.arange(1, 4), 2)):
        part = chain.subset(index)
        steps = part.stochastic_steps
        stats = ppo_chain_backward(policy, None, part, steps, advantages[index], RatioClip(0.2), 0.0, True, chunk)
        assert max(stats["ratio_max_dev"]) < FIRST_PASS_TOLERANCE, (index, chunk, stats["ratio_max_dev"])
