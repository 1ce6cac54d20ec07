"""Method options as the command line and a Config read them (methods/options.py): each by its declared type, within
its declared range, with a one-line error naming the option, what was given and what is valid."""

import dataclasses
import math
import re

import pytest

from methods import METHODS
from methods.options import NUMBERS, Bounds, Choice, Interval, check_search_space, option, parse_option
from methods.pipeline import Config as PipelineConfig


def test_the_pipelines_second_stage_takes_its_options():

    ddpo = PipelineConfig(rl_options="prompts_per_iter=4, minibatch=4,learning_rate=1e-5,sample_steps=none").rl_config()
    assert (ddpo.prompts_per_iter, ddpo.minibatch, ddpo.learning_rate, ddpo.sample_steps) == (4, 4, 1e-5, None)
    assert PipelineConfig().rl_config() == METHODS["ddpo"].Config()
    with pytest.raises(ValueError, match="expected FIELD=VALUE with FIELD an option of raft .*got 'minibatch=4'"):
        PipelineConfig(rl_method="raft", rl_options="minibatch=4")
    rocm = PipelineConfig(rl_method="rocm", rl_options="gradient_checkpointing=false").rl_config()
    assert rocm.gradient_checkpointing is False
    assert PipelineConfig(rl_method="rocm", rl_options="gradient_checkpointing=true").rl_config().gradient_checkpointing
    # one spelling of a flag for the command line and the nested options (methods/options.py)
    assert PipelineConfig(rl_method="rocm", rl_options="gradient_checkpointing=no").rl_config() == rocm
    with pytest.raises(ValueError, match="gradient_checkpointing: expected true or false, got 'maybe'"):
        PipelineConfig(rl_method="rocm", rl_options="gradient_checkpointing=maybe")
    with pytest.raises(ValueError, match="minibatch: expected an integer, got '4.5'"):
        PipelineConfig(rl_options="minibatch=4.5")


def declared(annotation: str, **bounds) -> tuple[str, Bounds]:
    """The type and range of a Config field declared as `annotation` with `bounds`."""
    field = dataclasses.fields(dataclasses.make_dataclass("C", [("x", annotation, option(None, **bounds))]))[0]
    return str(field.type), field.metadata["bounds"]


@pytest.mark.parametrize(
    "text, annotation, value",
    [
        ("yes", "bool", True),
        ("OFF", "bool", False),
        ("7", "int", 7),
        ("none", "int | None", None),
        ("3e-5", "float | None", 3e-5),
        ("0.2", "float", 0.2),
        ("kl", "str", "kl"),
    ],
)
def test_an_option_reads_by_its_declared_type(text, annotation, value):
    assert parse_option(text, *declared(annotation)) == value


@pytest.mark.parametrize(
    "text, annotation, bounds, message",
    [
        ("2", "bool", {}, "expected true or false, got '2'"),
        ("x", "int", {}, "expected an integer, got 'x'"),
        ("none", "float", {}, "expected a number, got 'none'"),
        ("x", "int | None", {}, "expected an integer or none, got 'x'"),
        ("inf", "float", {}, "must be a finite number, got inf"),
        ("1e400", "float | None", {"above": 0}, "must be a finite number, got inf"),
        ("-nan", "float", {"at_least": 0}, "must be a finite number, got nan"),
        ("0", "float", {"above": 0}, "must be > 0, got 0"),
        ("1.5", "float", {"above": 0, "at_most": 1}, "must be > 0 and <= 1, got 1.5"),
        ("-1", "int", {"at_least": 1}, "must be >= 1, got -1"),
    ],
)
def test_an_option_of_the_wrong_kind_or_out_of_range_says_what_was_expected(text, annotation, bounds, message):
    with pytest.raises(ValueError, match=message):
        parse_option(text, *declared(annotation, **bounds))


NUMERIC_OPTIONS = [
    (name, f)
    for name, method in METHODS.items()
    for f in dataclasses.fields(method.Config)
    if str(f.type).removesuffix(" | None") in NUMBERS
]


@pytest.mark.parametrize("name, field", NUMERIC_OPTIONS, ids=[f"{n}.{f.name}" for n, f in NUMERIC_OPTIONS])
def test_every_numeric_option_declares_its_range_and_refuses_nan_inf_and_what_lies_outside(name, field, capsys):
    """nan and inf are refused on the command line, and 0 and -1 wherever they lie outside the declared range,
    each in one line naming the option, the value and the range; a value the command line lets through makes a
    valid Config or is refused by a check across fields, and a Config made in code (a suite, the pipeline)
    refuses what the command line refuses."""
    from bench.cli import build_parser

    bounds = field.metadata.get("bounds")
    assert bounds is not None, f"{name}.{field.name} declares no range: write it as option(default, ...)"
    parser = build_parser()
    for text in ("nan", "inf", "-inf", "0", "-1"):
        value = float(text)
        valid = math.isfinite(value) and bounds.holds(value)
        if valid:
            accepted = parser.parse_args(["run", f"--{name}.{field.name}={text}"])
            try:
                config = METHODS[name].Config(**{field.name: vars(accepted)[f"{name}.{field.name}"]})
            except ValueError as error:  # a check across fields (rocm: eta > 0 with a divergence) names it
                assert str(error).startswith(f"{name}.{field.name} must be"), error
            else:
                assert getattr(config, field.name) == value
            continue
        with pytest.raises(SystemExit):
            parser.parse_args(["run", f"--{name}.{field.name}={text}"])
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and f"--{name}.{field.name}" in error, error
        assert (f"got {text}" if math.isfinite(value) else text) in error, error
        if math.isfinite(value) or str(field.type).startswith("float"):
            with pytest.raises(ValueError, match=f"{name}.{field.name} must be"):
                METHODS[name].Config(**{field.name: int(value) if math.isfinite(value) else value})


@pytest.mark.parametrize("name", [name for name, method in METHODS.items() if method.trains])
def test_every_trained_method_searches_two_to_four_options_its_learning_rate_among_them(name):
    method = METHODS[name]
    fields = {f.name for f in dataclasses.fields(method.Config)}
    assert 2 <= len(method.search_space) <= 4, f"{name} searches {sorted(method.search_space)}"
    rates = {"learning_rate", "reward_learning_rate"} & fields  # the pipeline's policy rate is its second stage's
    assert rates & set(method.search_space), f"{name} does not search its learning rate"


@pytest.mark.parametrize(
    "name, space, message",
    [
        ("ddpo", {"clip": Interval(0.1, 0.3)}, "ddpo.search_space names no option 'clip'; options: prompts_per_iter"),
        ("ddpo", {"clip_range": Interval(0.0, 0.5)}, "ddpo.clip_range searches [0, 0.5], but its end must be > 0"),
        (
            "ddpo",
            {"clip_range": Interval(0.3, 0.5)},
            "ddpo.clip_range searches [0.3, 0.5], which leaves out its default",
        ),
        ("ddpo", {"kl_coef": Interval(0.0, 0.1, log=True)}, "needs low > 0"),
        ("ddpo", {"clip_range": Interval(0.5, 0.1)}, "an interval needs finite ends, low < high"),
        ("raft", {"keep_per_prompt": Interval(1, 2.5)}, "an int option's interval has integer ends"),
        ("rocm", {"divergence": Choice(("kl", "l2"))}, "but 'l2' is not a valid value"),
        ("rocm", {"divergence": Choice(("js", "tv"))}, "which leaves out its default 'kl'"),
        ("rocm", {"divergence": Interval(0, 1)}, "an interval, but the option is a str: search it as a Choice"),
    ],
)
def test_a_search_space_outside_the_options_valid_ranges_is_refused_in_one_line(name, space, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_search_space(name, METHODS[name].Config, space)
