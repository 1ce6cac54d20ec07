"""Bounded fuzzing (a fixed seed, a fixed count, seconds) of the two doors input comes in by: the command line's
parser and the reward server's request decoder. Whatever they are given, they answer in one line (exit 2) or accept;
nothing else escapes them."""

import io
import random
import time

import numpy as np
import pytest

from bench.cli import build_parser
from rewards.server import decode_request

VALUES = [
    "",
    "0",
    "-1",
    "1e400",
    "nan",
    "-inf",
    "9" * 400,
    "0x10",
    "1_000",
    "none",
    "true",
    "é",
    "\x00",
    "--",
    "digit+0.5*compress",
    "nfe:1e-9",
    "wall_s:0",
    "ddpo@flux",
    "a" * 5000,
    "1",
    "0.5",
    "300k",
]


def test_the_parser_answers_any_command_line_in_one_line_or_accepts_it(capsys):
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = [flag for action in run._actions for flag in action.option_strings if flag not in ("-h", "--help")]
    flags = [flag for flag in flags if flag != "--help-method"]  # it prints a help page and exits 0, by design
    rng = random.Random(0)
    started = time.monotonic()
    for _ in range(400):
        argv = ["run"]
        for _ in range(rng.randint(1, 4)):
            argv += [rng.choice(flags), rng.choice(VALUES)]
        try:
            parser.parse_args(argv)
        except SystemExit as exit_info:
            err = capsys.readouterr().err.strip()
            assert exit_info.code == 2 and len(err.splitlines()) == 1, (argv, err)
    assert time.monotonic() - started < 60


def valid_body() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 1, 8, 8), np.float32), prompts=np.array(["a handwritten one", "a seven"]))
    return buffer.getvalue()


@pytest.mark.parametrize("seed", range(4))
def test_the_request_decoder_refuses_any_damaged_body_with_a_value_error(seed):
    body, rng = valid_body(), random.Random(seed)
    started = time.monotonic()
    for _ in range(250):
        damaged = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            kind = rng.random()
            position = rng.randrange(len(damaged))
            if kind < 0.5:
                damaged[position] = rng.randrange(256)
            elif kind < 0.75:
                del damaged[position : position + rng.randint(1, 64)]
            else:
                damaged[position:position] = rng.randbytes(rng.randint(1, 64))
        try:
            images, prompts = decode_request(bytes(damaged), [(1, 8, 8)])
        except ValueError as error:
            assert "\n" not in str(error)
        else:  # a change the archive's checks cannot see (inside a prompt's text): still a valid request
            assert images.shape[1:] == (1, 8, 8) and len(prompts) == len(images)
    assert time.monotonic() - started < 60
