"""The compositional world: its language and rules (against hand-made scenes and a brute-force oracle), its prompt
sets, its scenes, its networks and rewards."""

import dataclasses
import itertools
import math

import pytest
import torch
from test_methods import flat_parameters, make

from bench.budget import Budget
from methods import METHODS
from models.flow import velocity_from_data
from models.networks import SlotReader, SlotTransformer, image_of, slots_of
from worlds import REWARDS, WORLDS, load_world, model_family
from worlds.digits.data import load_splits
from worlds.scenes import ScenesEntry
from worlds.scenes.build import RECIPE, ScenesConfig, tiny_scenes_config
from worlds.scenes.data import IMAGE_SHAPE, compose, draw_prompt_sets, load_prompts, scene_for
from worlds.scenes.rewards import FLOOR, GenevalReward, OcrReward
from worlds.scenes.rules import EMPTY, FAMILIES, SLOTS, Request, parse, partial, satisfaction_probability, strict

R, G, B = 0, 1, 2
_ = (EMPTY, 0)


@pytest.mark.parametrize(
    "prompt, scene, expected",
    [
        ("a 7", [_, (7, B), _, _], 1.0),
        ("a 7", [_, (1, B), _, _], 0.0),
        ("a seven", [(7, R), _, _, _], 1.0),
        ("an eight", [_, _, _, (8, G)], 1.0),
        ("a 3 and a 5", [(5, R), _, (3, G), _], 1.0),
        ("a 3 and a 5", [(5, R), _, (2, G), _], 0.5),
        ("three 7s", [(7, R), (7, G), _, (7, B)], 1.0),
        ("three 7s", [(7, R), (7, G), (7, G), (7, B)], 2 / 3),
        ("three 7s", [(7, R), _, _, _], 1 / 3),
        ("two 0s", [_, _, _, _], 0.0),
        ("a red 4", [_, (4, R), _, _], 1.0),
        ("a red 4", [_, (4, B), _, _], 0.5),
        ("a red 4", [(3, R), _, _, _], 0.0),
        ("a 2 above a 9", [_, (2, R), _, (9, G)], 1.0),
        ("a 2 above a 9", [(2, R), _, _, (9, G)], 2 / 3),  # diagonal: not directly above
        ("a 2 above a 9", [(9, R), _, (2, G), _], 2 / 3),
        ("a 2 below a 9", [(9, R), _, (2, G), _], 1.0),
        ("a 6 left of a 1", [_, _, (6, B), (1, B)], 1.0),
        ("a 6 left of a 1", [_, _, (1, B), (6, B)], 2 / 3),
        ("a 6 right of a 1", [_, _, (1, B), (6, B)], 1.0),
        ("a red 3 and a blue 8", [(8, B), (3, R), _, _], 1.0),
        ("a red 3 and a blue 8", [(8, R), (3, B), _, _], 0.5),  # colours swapped: the binding fails
        ("a red 3 and a blue 8", [(8, B), _, _, _], 0.5),
        ("the number 4071", [(4, R), (0, G), (7, B), (1, R)], 1.0),
        ("the number 4071", [(4, R), (0, G), (1, B), (7, R)], 0.5),  # two substitutions of four
        ("the number 407", [(4, R), _, (0, G), (7, B)], 1.0),  # the empty slot is skipped in reading order
        ("the number 407", [(4, R), (0, R), (7, G), (7, B)], 2 / 3),  # one insertion over three
        ("the number 52", [_, _, _, _], 0.0),
    ],
)
def test_rules_on_hand_made_scenes(prompt, scene, expected):
    request = parse(prompt)
    assert partial(request, scene) == pytest.approx(expected)
    assert strict(request, scene) == (expected == 1.0)


def test_parse_reads_every_family_and_refuses_what_is_not_in_the_language():
    assert parse("a 2 left of a 9") == Request("position", ((2, None), (9, None)), relation="left of")
    assert parse("a green 3 and a red 8") == Request("binding", ((3, 1), (8, 0)))
    assert parse("four 0s") == Request("counting", ((0, None),), count=4)
    assert parse("the number 90") == Request("ocr", ((9, None), (0, None)), text="90")
    with pytest.raises(ValueError, match=r"not a prompt of the compositional world: 'a purple 4'; its forms: 'a 7'"):
        parse("a purple 4")
    with pytest.raises(ValueError, match=r"names two different digits, got 'a 3 above a 3'"):
        parse("a 3 above a 3")


def _brute_force(request: Request, digits: torch.Tensor, colours: torch.Tensor) -> float:
    """P(strict) by enumerating every scene over the digits the request names, one 'other' digit and empty, in
    every colour: the per-slot probabilities of the lumped states sum to 1, so the sum is exact."""
    named = sorted({d for d, _ in request.objects})
    other = next(d for d in range(10) if d not in named)
    states, chances = [], []
    for slot in range(SLOTS):
        p_other = 1 - digits[slot, named].sum() - digits[slot, EMPTY]
        slot_states = [((EMPTY, 0), float(digits[slot, EMPTY]))]
        for digit in [*named, other]:
            p_digit = float(digits[slot, digit]) if digit != other else float(p_other)
            slot_states += [((digit, c), p_digit * float(colours[slot, c])) for c in range(3)]
        states.append([s for s, _ in slot_states])
        chances.append([p for _, p in slot_states])
    total = 0.0
    for picks in itertools.product(*(range(len(s)) for s in states)):
        scene = [states[slot][i] for slot, i in enumerate(picks)]
        if strict(request, scene):
            total += math.prod(chances[slot][i] for slot, i in enumerate(picks))
    return total


@pytest.mark.parametrize(
    "prompt",
    [
        "a 7",
        "a 3 and a 5",
        "two 7s",
        "three 7s",
        "four 7s",
        "a red 4",
        "a 2 above a 9",
        "a 6 right of a 1",
        "a red 3 and a blue 8",
        "the number 4071",
        "the number 407",
        "the number 52",
    ],
)
def test_satisfaction_probability_is_exact_against_enumerating_every_scene(prompt):
    generator = torch.Generator().manual_seed(len(prompt))
    digits = torch.randn(4, 11, generator=generator, dtype=torch.float64).mul(1.5).softmax(1)
    colours = torch.randn(4, 3, generator=generator, dtype=torch.float64).softmax(1)
    request = parse(prompt)
    assert float(satisfaction_probability(request, digits, colours)) == pytest.approx(
        _brute_force(request, digits, colours), abs=1e-12
    )


def test_the_committed_prompt_sets_are_the_generated_ones_and_hold_out_their_combinations():
    generated = draw_prompt_sets()
    train = set(load_prompts()["train"])
    for name in generated:
        assert load_prompts()[name] == generated[name]
    for name in ("eval_seen", "eval_unseen"):
        families = [parse(p).family for p in load_prompts()[name]]
        assert {f: families.count(f) for f in FAMILIES} == {f: 8 for f in FAMILIES}
    assert set(load_prompts()["eval_seen"]) <= train
    unseen = load_prompts()["eval_unseen"]
    assert not set(unseen) & train
    # a held-out combination's parts (digits, counts, colours, relations) were all seen in training
    train_words = {word for p in train for word in p.split()}
    assert {w for p in unseen if parse(p).family not in ("single", "ocr") for w in p.split()} <= train_words


def test_scenes_composed_for_a_prompt_satisfy_it_as_a_perfect_reader_sees_them():
    generator = torch.Generator().manual_seed(0)
    images, labels = load_splits()["test"]
    prompts = load_prompts()["train"][::7]
    for prompt in prompts:
        assert strict(parse(prompt), scene_for(parse(prompt), generator))
    canvas = compose(["a red 3 and a blue 8"], images, labels, torch.Generator().manual_seed(1))
    assert canvas.shape == (1, *IMAGE_SHAPE) and canvas.min() >= 0 and canvas.max() <= 1
    ink = slots_of(canvas, 8).sum(dim=(3, 4))[0]  # (slot, colour)
    filled = [(slot, int(ink[slot].argmax())) for slot in range(4) if ink[slot].sum() > 0]
    assert len(filled) == 2 and {c for _, c in filled} == {R, B}


@pytest.mark.parametrize(
    "prompt, digits",
    [
        ("a 7", [7, EMPTY, EMPTY, EMPTY]),
        ("a 3 and a 5", [3, 5, EMPTY, EMPTY]),
        ("three 6s", [6, 6, 6, EMPTY]),
        ("a 2 above a 9", [2, EMPTY, 9, EMPTY]),
        ("a 2 below a 9", [9, EMPTY, 2, EMPTY]),
        ("a 4 left of a 1", [4, 1, EMPTY, EMPTY]),
        ("a 4 right of a 1", [1, 4, EMPTY, EMPTY]),
        ("the number 407", [4, 0, 7, EMPTY]),
    ],
)
def test_the_generators_learn_the_canonical_layout(prompt, digits):
    scenes = [scene_for(parse(prompt), torch.Generator().manual_seed(seed)) for seed in range(4)]
    assert all([digit for digit, _ in scene] == digits for scene in scenes)


def test_a_canonical_scene_keeps_the_colours_asked_and_draws_the_others():
    colours = {
        tuple(c for _, c in scene_for(parse("a red 3 and a blue 8"), torch.Generator().manual_seed(s)))
        for s in range(8)
    }
    assert colours == {(R, B, 0, 0)}
    drawn = {scene_for(parse("a 3"), torch.Generator().manual_seed(s))[0][1] for s in range(16)}
    assert drawn == {R, G, B}


def test_slots_round_trip_and_the_generator_ignores_padding_tokens():
    x = torch.randn(2, *IMAGE_SHAPE)
    assert torch.equal(image_of(slots_of(x, 8), 16, 16), x)
    assert torch.equal(slots_of(x, 8)[:, 1], x[:, :, :8, 8:])  # slot 1 is the top right
    torch.manual_seed(0)
    network = SlotTransformer(IMAGE_SHAPE, 384, 8, width=32, depth=2)
    for p in network.parameters():  # zero-initialised layers would hide the text path
        torch.nn.init.normal_(p, std=0.2)
    text = torch.randn(2, 16, 384)
    text[:, 9:] = 0
    t = torch.tensor([10, 500])
    out = network(x, t, text)
    assert torch.allclose(out, network(x, t, text[:, :9]), atol=1e-6)
    changed = text.clone()
    changed[:, 3] += 1
    assert not torch.allclose(out, network(x, t, changed), atol=1e-3)
    # predicting clean slots, it returns its family's output computed from them
    network.from_data = velocity_from_data
    assert torch.allclose(network(x, t, text), velocity_from_data(x, t, out), atol=1e-6)


class _OracleReader(torch.nn.Module):
    """Reads given per-slot logits, whatever the image."""

    def __init__(self, digit_logits, colour_logits):
        super().__init__()
        self.digit_logits, self.colour_logits = digit_logits, colour_logits

    def forward(self, images):
        return self.digit_logits, self.colour_logits

    read = SlotReader.read


def test_the_rewards_score_the_readers_scene_and_its_likelihood():
    generator = torch.Generator().manual_seed(0)
    digit_logits = torch.randn(2, 4, 11, generator=generator)
    colour_logits = torch.randn(2, 4, 3, generator=generator)
    digit_logits[0, :, :] = -10
    digit_logits[0, [0, 1, 2, 3], [4, 0, 7, 1]] = 10  # image 0 reads 4071
    reader = _OracleReader(digit_logits, colour_logits)
    images = torch.zeros(2, *IMAGE_SHAPE)
    prompts = ["the number 4071", "the number 4071"]
    assert GenevalReward(reader, "0" * 8)(images, prompts)[0] == 1.0
    ocr = OcrReward(reader, "0" * 8)(images, prompts)
    p = digit_logits.softmax(2)
    by_hand = torch.log(p[:, 0, 4] * p[:, 1, 0] * p[:, 2, 7] * p[:, 3, 1] + FLOOR)
    assert torch.allclose(ocr, by_hand, atol=1e-6)


# every pairing of a method with a scenes generator of a family it supports
PAIRS = [
    (name, model)
    for name in METHODS
    for model in WORLDS["scenes"].models
    if model_family(model) in METHODS[name].families
]


@pytest.fixture(scope="module")
def tiny_scenes():
    return load_world("scenes-tiny", log=lambda *_: None)


@pytest.mark.parametrize("name, model", PAIRS)
def test_every_method_runs_on_the_scenes_world(tiny_scenes, name, model):
    # the differentiable reward where the method takes it (every gradient method needs it), GenEval's otherwise
    reward = "ocr" if METHODS[name].incompatibility(REWARDS["ocr"], "nfe") is None else "geneval"
    trainer, meter = make(tiny_scenes, name, model, reward=reward)
    if not METHODS[name].trains:  # base and best-of-N spend their budget generating
        prompts = tiny_scenes.prompts["eval_unseen"][:4]
        images = trainer.generate(prompts, 3, torch.Generator().manual_seed(5), Budget("nfe", 100))
        assert images.shape == (4, *IMAGE_SHAPE) and images.min() >= 0 and images.max() <= 1
        return
    before = flat_parameters(trainer)
    stats = trainer.step()
    assert stats and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert meter.accounts["train"].nfe > 0 and not torch.equal(before, flat_parameters(trainer))


def test_the_scenes_world_scores_real_scenes_of_its_prompts_near_perfect_and_noise_near_zero(tiny_scenes):
    prompts = [p for p in tiny_scenes.prompts["eval_unseen"] for _ in range(2)]
    real = compose(prompts, *tiny_scenes.splits["test"], torch.Generator().manual_seed(5))
    reward = REWARDS["geneval"].from_world(tiny_scenes)
    scores = tiny_scenes.score_images(real, prompts, 2, reward) | tiny_scenes.sample_metrics(real, prompts)
    assert set(scores) == set(tiny_scenes.metrics)
    assert scores["judge_score"] == pytest.approx(sum(scores[f"judge_{f}"] for f in FAMILIES) / len(FAMILIES))
    noise = torch.rand_like(real)
    noise_scores = tiny_scenes.score_images(noise, prompts, 2, reward) | tiny_scenes.sample_metrics(noise, prompts)
    assert scores["judge_score"] > noise_scores["judge_score"] + 0.2 and scores["fid"] < noise_scores["fid"]
    # the soft score credits every atom read right, so it is never below the strict one
    assert scores["judge_soft"] >= scores["judge_score"] and noise_scores["judge_soft"] >= noise_scores["judge_score"]
    assert scores["judge_soft"] > noise_scores["judge_soft"]


SAMPLE_METRICS = ("judge_soft", "kernel_score", "judges_agree", "reader_only")


def test_a_rescore_reads_a_stored_run_as_its_own_evaluation_did(tiny_scenes, tmp_path, monkeypatch):
    from bench.evaluate import EvalConfig, rescore
    from bench.runner import RunSpec, execute
    from bench.store import Store

    spec = RunSpec(
        suite="test",
        world="scenes-tiny",
        method="base",
        variant="",
        model="scene-flow",
        method_config=METHODS["base"].Config(),
        reward="geneval",
        seed=0,
        budget=Budget("nfe", 100),
        milestones=(0.5, 1.0),
        eval=EvalConfig(steps=3, samples_per_prompt=2),
    )
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_scenes, store, tmp_path, log=lambda *_: None) == "done"
        read = store.results_frame().query("metric in @SAMPLE_METRICS")
        # each milestone's two splits, each metric a share of images
        assert len(read) == 4 * len(SAMPLE_METRICS) and read["value"].between(0, 1).all()
        with store._write() as conn:  # as a run recorded before the soft score and the second judge existed
            conn.execute(
                f"DELETE FROM metrics WHERE metric IN ({', '.join('?' * len(SAMPLE_METRICS))})", SAMPLE_METRICS
            )
        assert rescore(store, tiny_scenes) == len(read)
        reads, read_samples = [], tiny_scenes.sample_metrics
        monkeypatch.setattr(tiny_scenes, "sample_metrics", lambda *args: reads.append(1) or read_samples(*args))
        assert rescore(store, tiny_scenes) == 0 and len(reads) == 1  # one set read shows the others have them all
        again = store.results_frame().query("metric in @SAMPLE_METRICS")
    columns = ["run_id", "milestone", "split", "metric", "value"]
    assert again[columns].reset_index(drop=True).equals(read[columns].reset_index(drop=True))


@pytest.mark.slow  # builds the world twice, over 10 s on 2 cores (make test-all runs it)
def test_the_build_is_deterministic_alone_or_side_by_side(tmp_path):
    first = RECIPE.build(tmp_path / "a", tiny_scenes_config(), log=lambda *_: None)
    second = RECIPE.build(tmp_path / "b", tiny_scenes_config(), log=lambda *_: None, workers=2)
    assert list(second["components"]) == list(first["components"]) == list(RECIPE.components)
    assert {n: c["hash"] for n, c in first["components"].items()} == {
        n: c["hash"] for n, c in second["components"].items()
    }


@pytest.mark.slow
def test_both_readers_read_real_held_out_scenes_and_the_judge_scores_them_near_one(tmp_path):
    # the world's own readers (their recipe is the full world's), beside generators that barely train
    config = dataclasses.replace(tiny_scenes_config(), reader_steps=ScenesConfig().reader_steps)
    world = ScenesEntry(config).load("scenes", tmp_path, log=lambda *_: None)
    for name in ("reader", "judge"):
        accuracy = world.manifest["components"][name]
        assert accuracy["test_digit_accuracy"] > 0.97 and accuracy["test_colour_accuracy"] == 1.0, name
    prompts = [p for p in world.prompts["eval_unseen"] for _ in range(4)]
    real = compose(prompts, *world.splits["test"], torch.Generator().manual_seed(0))
    scores = world.score_images(real, prompts, 4, REWARDS["geneval"].from_world(world))
    assert scores["judge_score"] > 0.8 and scores["reader_score"] > 0.8 and scores["reward"] > 0.9
