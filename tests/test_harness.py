"""The harness: bad input fails fast, runs resume after a kill, failures are isolated, the CLI works end to end."""

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import worlds
from bench.budget import Budget
from bench.cli import build_parser, main
from bench.commands import suite_from_args
from bench.experiments import SUITES
from bench.experiments.suite import validate
from bench.runner import RunSpec, execute
from bench.store import LEASE_STALE_S, Store
from bench.sweep import plan, specs
from methods.ddpo import DDPO
from models.policy import DiffusionPolicy
from worlds import REWARDS


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--method", "ppo"], "unknown method 'ppo'; valid: base, best_of_n, raft, ddpo"),
        (["run", "--reward", "beauty"], "unknown reward 'beauty'; valid: digit, compress"),
        (["run", "--reward", "aesthetic"], "world 'digits' offers no 'aesthetic' reward; valid: digit, compress, gold"),
        (["run", "--method", "ddpo@sd15"], "unknown model 'sd15'; valid: diffusion, consistency, flow"),
        (
            ["run", "--smoke"],
            "suite 'default' has no --smoke size; suites with one: pg-diagnostics, scenes, nightly-gpu",
        ),
        (["run", "--suite", "nightly"], "unknown suite 'nightly'; valid: default, smoke"),
        (["run", "--budget", "flops:1e9"], "expected [UNIT:]AMOUNT with UNIT in nfe, reward_queries, samples, wall_s"),
        (["run", "--seeds", "0"], "expected a positive integer"),
        # a count is bounded before anything is built from it: 1e8 seeds used to fill the memory, silently
        (
            ["run", "--seeds", "100000000"],
            "argument --seeds: expected a positive integer of at most 1000, got 100000000",
        ),
        (["run", "--workers", "9" * 30], "expected a positive integer of at most 2147483647, got a 30-digit number"),
        (
            ["run", "--ddpo.minibatch", "9" * 400],
            "--ddpo.minibatch: must be within +-2147483647, got a 400-digit number",
        ),
        (["run", "--ddpo.lr", "1e-4"], "ddpo options: prompts_per_iter, samples_per_prompt"),
        (["run", "--ddpo.clip", "0.1"], "unrecognized arguments: --ddpo.clip 0.1 (ddpo options: prompts_per_iter"),
        (["run", "--ddpo.clip_range", "big"], "--ddpo.clip_range: expected a number, got 'big'"),
        (["run", "--raft.keep_per_prompt", "9"], "raft.keep_per_prompt must be in [1, samples_per_prompt=8], got 9"),
        (["run", "--ddpo.eta", "0"], "argument --ddpo.eta: must be > 0, got 0"),
        (["run", "--ddpo.clip_range", "-1"], "argument --ddpo.clip_range: must be > 0, got -1"),
        (["run", "--ddpo.learning_rate", "-1"], "argument --ddpo.learning_rate: must be > 0, got -1"),
        (["run", "--rocm.beta", "nan"], "argument --rocm.beta: must be a finite number, got nan"),
        (["run", "--sas.minibatch", "0"], "argument --sas.minibatch: must be >= 1, got 0"),
        (["run", "--rocm.beta", "-1e-3"], "(a value starting with '-' is written --rocm.beta=VALUE)"),
        (["run", "--rocm.beta=-1e-3"], "argument --rocm.beta: must be >= 0, got -0.001"),
        (["run", "--budget", "nfe:1e400"], "AMOUNT a finite number > 0"),
        (["run", "--method", "best_of_n", "--budget", "wall_s:60"], "no method/reward pair of this suite can run"),
        # timed by the committed store's own runs: ddpo's step takes seconds
        (["run", "--method", "ddpo", "--budget", "wall_s:10"], "budget wall_s:10 is too small for ddpo@"),
        (["run", "--method", "ddpo@flux"], "unknown model 'flux'; valid: diffusion, consistency"),
        (["run", "--method", "rocm/strong"], "unknown variant 'rocm/strong'; valid: none in this suite"),
        (["run", "--suite", "rocm-regularization", "--method", "rocm/kl-9"], "valid: rocm/none, rocm/kl-0.001"),
        (
            ["run", "--method", "rocm", "--rocm.divergence", "kld"],
            "rocm.divergence must be one of none, kl, reverse_kl",
        ),
        (["run", "--method", "rocm", "--rocm.sample_steps", "many"], "expected an integer or none, got 'many'"),
        # one DDPO step on the flow model is 4,928 NFE: 66% of a 30k budget's first milestone (7.5k)
        (
            ["run", "--method", "ddpo@flow", "--budget", "nfe:30k"],
            "a step costs up to 4928 nfe, more than 10% of the first milestone (7500, at 0.25 of the budget); the "
            "smallest budget that keeps every milestone within 10% is nfe:200k",
        ),
        (["run", "--budget-tolerance", "0"], "expected a fraction > 0 (0.1: 10%), got '0'"),
        # an untimed suite too: no step of any method fits a milestone under a second
        (
            ["run", "--suite", "smoke", "--budget", "wall_s:0.000001", "--store", "none.sqlite"],
            "puts its first milestone at 5e-07 s (at 0.5 of the budget), less than the 1 s a wall-clock milestone",
        ),
        (["serve", "--reward", "digit", "--port", "70000"], "expected a port from 0 (any free one) to 65535"),
        (
            ["run", "--sharding", "fsdp2"],
            "--sharding fsdp2 shards a scale world's full fine-tunes; suite 'default' runs",
        ),
        (["run", "--sharding", "zero3"], "argument --sharding: invalid choice: 'zero3' (choose from 'none', 'fsdp2')"),
        (["run", "--store", "tests"], "argument --store: tests is a folder; name the store file in it, e.g. tests/"),
        (["leaderboard", "--store", "tests"], "argument --store: tests is a folder; name the store file in it"),
        # a combined reward: each term checked as a reward, its weight as a positive number
        (["run", "--reward", "digit+0.5*beauty"], "unknown reward 'beauty'; valid: digit, compress"),
        (["run", "--reward", "digit+-1*compress"], "the weight '-1' of 'compress' must be a positive number"),
        (["run", "--reward", "digit+digit"], "reward spec 'digit+digit' names 'digit' more than once"),
        (["run", "--reward", "digit+0.5*aesthetic"], "world 'digits' offers no 'aesthetic' reward"),
        (
            ["run", "--method", "rocm", "--reward", "digit+compress"],
            "no method/reward pair of this suite can run: {'rocm+digit+compress': 'needs a differentiable reward'}",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_valid_choices_before_any_model_loads(argv, message, capsys, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the command line was validated")

    for entry in {type(e) for e in worlds.WORLDS.values()}:
        monkeypatch.setattr(entry, "load", must_not_load)
        monkeypatch.setattr(entry, "ensure", must_not_load)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_help_documents_every_method_option_and_run_help_fits_a_screen(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    with pytest.raises(SystemExit):
        main(["run", "--help-method", "all"])
    out = capsys.readouterr().out
    for option in (
        "--ddpo.clip_range",
        "--raft.keep_per_prompt",
        "--best_of_n.max_candidates",
        "--rocm.divergence",
        "--rocm.gradient_checkpointing",
    ):
        assert option in out
    assert "PPO ratio clipping epsilon" in out
    with pytest.raises(SystemExit):
        main(["run", "--help-method", "rocm"])
    out = capsys.readouterr().out
    assert "--rocm.divergence" in out and "--ddpo." not in out
    for command in ("run", "models", "serve", "leaderboard", "rescore", "throughput", "cpu-throughput"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert len(out.splitlines()) <= 60, f"{command} --help is {len(out.splitlines())} lines"
        if command == "run":
            assert "--budget" in out and "--help-method" in out and "--ddpo." not in out


def smoke_spec(method="ddpo", seed=0):
    suite = SUITES["smoke"]()
    return RunSpec(
        suite="test",
        world="digits-tiny",
        method=method,
        variant="",
        model="diffusion",
        method_config=suite.method_config(method),
        reward="digit",
        seed=seed,
        budget=Budget("nfe", 600),
        milestones=(0.5, 1.0),
        eval=suite.eval,
    )


def metric_values(store):
    frame = store.results_frame()
    return frame.set_index(["run_id", "milestone", "split", "metric"])["value"].sort_index()


def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_numbers(tiny_world, tmp_path, monkeypatch):
    spec = smoke_spec()
    with Store(tmp_path / "straight.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path / "ck1", checkpoint_every_s=0, log=lambda *_: None) == "done"
        expected = metric_values(store)
        trace = store.diagnostics_frame()

    original_step, calls = DDPO.step, []
    # after the first milestone (half the budget), in the middle of the second
    per_step = DDPO.step_usage(spec.method_config, DiffusionPolicy)["nfe"]
    die_at = math.ceil(spec.milestones[0] * spec.budget.amount / per_step) + 1
    assert die_at * per_step < spec.budget.amount

    def step_then_die(self):
        calls.append(1)
        if len(calls) == die_at:
            raise KeyboardInterrupt
        return original_step(self)

    monkeypatch.setattr(DDPO, "step", step_then_die)
    with Store(tmp_path / "killed.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            execute(spec, tiny_world, store, tmp_path / "ck2", checkpoint_every_s=0, log=lambda *_: None)
        run_id = spec.run_id(tiny_world.model_hash(spec.model))
        assert store.run_status(run_id) == "running" and store.milestones_recorded(run_id) == {0}
        assert (tmp_path / "ck2" / f"{run_id}.pt").exists()
    monkeypatch.setattr(DDPO, "step", original_step)
    with Store(tmp_path / "killed.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path / "ck2", checkpoint_every_s=0, log=lambda *_: None) == "done"
        assert metric_values(store).equals(expected)
        # the steps before the kill are recorded once, from the checkpoint: the same trace as the straight run's
        pd.testing.assert_frame_equal(store.diagnostics_frame(), trace)
    assert not (tmp_path / "ck2" / f"{run_id}.pt").exists()


def test_a_nan_run_is_recorded_as_failed_and_the_next_run_goes_on(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setattr(DDPO, "step", lambda self: {"loss": float("nan")})
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(smoke_spec("ddpo"), tiny_world, store, tmp_path, log=lambda *_: None) == "failed"
        assert execute(smoke_spec("raft"), tiny_world, store, tmp_path, log=lambda *_: None) == "done"
        runs = store.runs_frame().set_index("method")
        assert "non-finite" in runs.loc["ddpo", "reason"] and runs.loc["raft", "status"] == "done"


class PlantedPayload:
    """Unpickling this runs code: it touches `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("planted", ["payload", "truncated", "empty"])
def test_a_bad_checkpoint_runs_no_code_fails_its_run_alone_and_is_set_aside(tiny_world, tmp_path, planted):
    spec = smoke_spec()
    run_id = spec.run_id(tiny_world.model_hash(spec.model))
    checkpoint, marker = tmp_path / "ck" / f"{run_id}.pt", tmp_path / "code-ran"
    checkpoint.parent.mkdir()
    if planted == "payload":
        torch.save({"trainer": PlantedPayload(marker)}, checkpoint)
    else:
        torch.save({"meter": torch.zeros(1000)}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[: 100 if planted == "truncated" else 0])
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, checkpoint.parent, log=lambda *_: None) == "failed"
        reason = store.runs_frame().set_index("run_id").loc[run_id, "reason"]
        assert not marker.exists() and str(checkpoint) in reason and "moved to" in reason
        assert not checkpoint.exists() and checkpoint.with_name(f"{checkpoint.name}.unreadable").exists()
        assert execute(smoke_spec("raft"), tiny_world, store, checkpoint.parent, log=lambda *_: None) == "done"
        assert execute(spec, tiny_world, store, checkpoint.parent, log=lambda *_: None) == "done"  # afresh


def test_a_run_another_sweep_is_running_is_skipped_and_taken_over_once_its_owner_is_gone(tiny_world, tmp_path):
    spec = smoke_spec()
    record = spec.record(tiny_world.model_hash(spec.model), REWARDS[spec.reward].from_world(tiny_world).version)
    with Store(tmp_path / "store.sqlite") as store:
        assert store.start_run(record, owner="another-host:4242")  # a live sweep elsewhere claimed it
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "held"
        assert store.run_status(record.run_id) == "running" and not store.milestones_recorded(record.run_id)
        with store._write() as conn:  # that sweep stopped beating
            conn.execute("UPDATE leases SET heartbeat = heartbeat - ?", (LEASE_STALE_S + 1,))
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "done"
        assert store.holder(record.run_id) is None  # given up when the run ended


def test_run_ids_change_with_the_config_and_the_base_model():
    spec = smoke_spec()
    other = dataclasses.replace(spec, method_config=dataclasses.replace(spec.method_config, clip_range=0.1))
    assert spec.run_id("a") == smoke_spec().run_id("a")
    assert len({spec.run_id("a"), spec.run_id("b"), other.run_id("a")}) == 3


def test_a_budget_the_check_accepts_keeps_every_milestone_within_its_tolerance(tiny_world, tmp_path):
    suite = dataclasses.replace(
        SUITES["smoke"](), methods=("ddpo",), budget=Budget("nfe", 100), budget_tolerance=0.1, milestones=(0.5, 1.0)
    )
    with pytest.raises(ValueError, match=r"the smallest budget that keeps every milestone within 10% is nfe:") as info:
        validate(suite)
    smallest = Budget.parse(re.search(r"within 10% is (nfe:\S+)", str(info.value))[1])
    validate(dataclasses.replace(suite, budget=smallest))
    spec = dataclasses.replace(smoke_spec(), budget=smallest, milestones=suite.milestones)
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "done"
        frame = store.results_frame().drop_duplicates("milestone").sort_values("milestone")
    used = list(zip(frame["budget"], frame["nfe"]))
    assert [budget for budget, _ in used] == [smallest.amount / 2, smallest.amount]
    assert all(budget <= nfe <= 1.1 * budget for budget, nfe in used), used


def test_cli_end_to_end_produces_a_leaderboard_and_a_rerun_skips_everything(tmp_path, capsys):
    store = tmp_path / "smoke" / "store.sqlite"
    # a bare method name selects the suite's entries of it on every model: base and ddpo (diffusion,
    # consistency, flow), and rocm, whose `compress` cells are not applicable
    argv = ["run", "--suite", "smoke", "--method", "base,ddpo,rocm", "--reward", "digit,compress", "--seeds", "2"]
    argv += ["--store", str(store)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    # said before it starts
    assert (
        "suite 'smoke': 28 runs: 0 reused from the store, 28 to compute (no time estimate: the store has no " in first
    )
    assert "28 runs, 26 done, 2 n/a, 0 failed" in first
    board = (tmp_path / "smoke" / "leaderboard.md").read_text()
    for text in (
        "| base | diffusion |",
        "| base | consistency |",
        "| ddpo | diffusion |",
        "| ddpo | consistency |",
        "| ddpo | flow |",
        "| rocm | consistency |",
        "needs a differentiable reward",
        "judge_acc ↑",
        "fid ↓",
        "Reward: compress",
        "Reward: digit",
    ):
        assert text in board, text
    assert (tmp_path / "smoke" / "leaderboard.csv").exists() and (tmp_path / "smoke" / "samples_digit.png").exists()
    # a third seed's runs are timed by the store's finished runs of the same cells
    with_third_seed = suite_from_args(build_parser().parse_args([*argv[:-4], "--seeds", "3", *argv[-2:]]))
    assert re.fullmatch(
        r"42 runs: 28 reused from the store, 14 to compute \(about \d+ min with 2 worker\(s\), from the store's "
        r"finished runs\)",
        plan(specs(with_third_seed), store, 2),
    )
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "suite 'smoke': 28 runs: 28 reused from the store, 0 to compute" in again
    # one line for the reused runs, none per run; the answer and where the tables are, not the tables
    assert "28 runs, 0 done, 0 n/a, 0 failed, 28 reused from the store" in again
    assert "-s0-" not in again and "| base |" not in again
    # the methods asked for, each with its place in its reward and model's ranking (rocm and ddpo on consistency)
    assert "The asked-for methods' rank by judge_acc (eval_unseen) at the full budget" in again
    assert re.search(r"digit @ consistency +rocm +#[12]( \(tied\))? of 2 ", again) and re.search(
        r"digit @ flow +base +base ", again
    )
    assert "leaderboard.md" in again
    assert main(["leaderboard", "--suite", "smoke", "--store", str(store)]) == 0


def test_a_method_that_learns_from_feedback_is_built_with_its_annotator_only(tiny_world):
    """build_trainer hands a feedback method the annotator (never the reward) and refuses to build it without one;
    every other method gets the metered reward."""
    from bench.meter import Meter
    from bench.trainers import build_trainer
    from methods import METHODS
    from rewards.feedback import Feedback

    policy, reward = tiny_world.make_policy("diffusion"), REWARDS["digit"].from_world(tiny_world)
    prompts, config = tiny_world.prompts["train"], METHODS["sft"].Config()
    with pytest.raises(ValueError, match="sft learns from an annotator's feedback"):
        build_trainer("sft", policy, reward, prompts, config, 0, Meter())
    annotators = []

    def annotator(meter):
        annotators.append(Feedback.from_world(tiny_world, reward, meter, policy))
        return annotators[-1]

    assert build_trainer("sft", policy, reward, prompts, config, 0, Meter(), annotator).reward is annotators[0]
    ddpo = build_trainer("ddpo", policy, reward, prompts, METHODS["ddpo"].Config(), 0, Meter(), annotator)
    assert len(annotators) == 1 and ddpo.reward.name == reward.name and ddpo.reward is not reward


def test_every_subcommand_has_one_handler():
    import argparse

    from bench.commands import HANDLERS

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subcommands.choices) == set(HANDLERS)


def test_a_registered_method_joins_every_leaderboard_suite_without_an_edit_there(monkeypatch):
    from bench.experiments import build_suite
    from methods import METHODS

    class Newcomer(METHODS["flow_grpo"]):
        name = "newcomer"

    monkeypatch.setitem(METHODS, "newcomer", Newcomer)
    assert "newcomer@flow" in build_suite("default").methods and "newcomer@flow" in build_suite("smoke").methods
    assert "newcomer@scene-flow" in build_suite("scenes").methods
    assert "newcomer@sd35" in build_suite("nightly-gpu").methods
    # a baseline compared in a suite of its own (compared_on empty) stays off the default leaderboard
    assert not any(entry.startswith(("sft@", "pipeline@")) for entry in build_suite("default").methods)
    assert {"sft@scene-diffusion", "pipeline@scene-diffusion"} <= set(build_suite("scenes").methods)


def test_the_leaderboard_suites_run_cps_beside_flow_grpo_as_its_sampler_variant():
    from bench.experiments import build_suite

    for name, model in (("default", "flow"), ("smoke", "flow"), ("scenes", "scene-flow")):
        suite = validate(build_suite(name))
        assert f"flow_grpo/cps@{model}" in suite.methods, name
        assert suite.method_config("flow_grpo", "cps", model).dynamics == "cps"
        assert suite.method_config("flow_grpo", "", model).dynamics == "flow-sde"
    assert "flow_grpo/cps@scene-flow" in validate(build_suite("scenes", smoke=True)).methods


@pytest.mark.parametrize(
    "argv, folder",
    [
        (["run"], "default"),
        (["run", "--suite", "scenes"], "scenes"),
        (["run", "--suite", "smoke"], "smoke"),
        (["run", "--suite", "scenes", "--smoke"], "scenes-smoke"),
        (["run", "--suite", "nightly-gpu", "--smoke"], "nightly-gpu-smoke"),
        (["tune", "--suite", "scenes"], "scenes"),
    ],
)
def test_a_sweep_writes_its_local_layer_out_of_the_repositorys_tree(argv, folder):
    from bench.commands import ROOT, _store

    args = build_parser().parse_args(argv)
    assert _store(args, suite_from_args(args)) == ROOT / "artifacts" / "results" / folder / "store.sqlite"


@pytest.mark.parametrize("name, smoke", [(n, False) for n in SUITES] + [("scenes", True), ("nightly-gpu", True)])
def test_every_suite_and_smoke_twin_passes_its_checks(name, smoke):
    from bench.experiments import build_suite

    suite = build_suite(name, smoke)
    if suite.results and not suite.methods:  # a suite of another's tuned cells, none tuned yet: it says so
        with pytest.raises(ValueError, match=f"tune some first \\(make tune SUITE={suite.results}\\)"):
            validate(suite)
        return
    assert validate(suite).methods


def test_a_tuned_suite_runs_the_tuned_cells_beside_the_defaults(tmp_path, monkeypatch):
    from bench.experiments import scenes_leaderboard
    from bench.experiments.suite import write_tuned

    (tmp_path / "scenes").mkdir()
    cell = {"options": {"learning_rate": 1e-5}, "score": 0.6, "objective": "", "budget": "", "spent": 0, "trials": []}
    write_tuned(tmp_path / "scenes" / "tuned.json", {"flow_grpo@scene-flow/geneval": cell})
    monkeypatch.setattr(scenes_leaderboard, "LAYERS", (tmp_path / "local", tmp_path))
    suite = validate(scenes_leaderboard.scenes_tuned())
    assert (suite.methods, suite.rewards, suite.seeds) == (
        ("flow_grpo/tuned@scene-flow",),
        ("geneval",),
        (0, 1, 2, 3, 4),
    )
    [spec] = [s for s in specs(suite) if s.seed == 0]
    assert (spec.variant, spec.method_config.learning_rate, spec.suite) == ("tuned", 1e-5, "scenes-tuned")
    args = build_parser().parse_args(["run", "--suite", "scenes-tuned"])
    from bench.commands import ROOT, _committed, _store

    assert _store(args, suite) == ROOT / "artifacts" / "results" / "scenes" / "store.sqlite"  # beside the defaults
    assert _committed(suite) == ROOT / "results" / "scenes"


def test_a_methods_default_model_is_on_the_first_of_its_families_the_world_has():
    from bench.experiments.suite import parse_entry

    # rocm's first family (consistency) is not in the scenes world: its diffusion model is, where a StopIteration was
    assert parse_entry("rocm", None, "scenes") == ("rocm", "", "scene-diffusion")
    assert parse_entry("rocm", None, "digits") == ("rocm", "", "consistency")


def test_an_unexpected_error_is_one_line_and_its_traceback_is_behind_debug(capsys, monkeypatch):
    from bench import commands

    def disk_full(parser, args):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(commands.HANDLERS, "leaderboard", disk_full)
    monkeypatch.delenv("RLHF_BENCH_DEBUG")
    assert main(["leaderboard"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "python -m bench leaderboard: error: OSError: [Errno 28] No space left on device (--debug shows where)\n"
    )
    with pytest.raises(OSError, match="No space left"):
        main(["leaderboard", "--debug"])

    def interrupted(parser, args):
        raise KeyboardInterrupt

    monkeypatch.setitem(commands.HANDLERS, "leaderboard", interrupted)
    assert main(["leaderboard"]) == 130
    assert capsys.readouterr().err.startswith("python -m bench leaderboard: interrupted (finished runs are kept")


def test_a_bad_prompt_in_a_worlds_prompt_file_names_the_file_and_line(tmp_path, monkeypatch):
    from models import prompts
    from worlds.digits.data import load_prompts

    folder = tmp_path / "digits"
    folder.mkdir()
    for split in ("train", "eval_seen", "eval_unseen"):
        (folder / f"{split}.txt").write_text("# the digits\na handwritten one\n")
    (folder / "eval_seen.txt").write_text("a handwritten one\n\na handwritten seven or eight\n")
    monkeypatch.setattr(prompts, "PROMPT_ROOT", tmp_path)
    with pytest.raises(ValueError, match="eval_seen.txt, line 3: a digits-world prompt must name exactly one digit"):
        load_prompts()


def test_a_busy_port_is_one_line_before_the_reward_loads(capsys, monkeypatch):
    import socket

    def must_not_load(*args, **kwargs):
        raise AssertionError("the reward loaded before its port was taken")

    monkeypatch.setattr(worlds, "load_world", must_not_load)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", "--world", "digits-tiny", "--reward", "digit", "--port", str(port)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another --port" in err
