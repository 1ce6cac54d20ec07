"""A reward served over HTTP (rewards/server.py, `python -m bench serve`): the same scores and the same runs as the
reward in process, clear errors when the server is down or refuses a request."""

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from test_harness import smoke_spec

from bench.cell import run_cell
from bench.cli import main
from bench.runner import execute
from bench.store import Store
from rewards.server import RemoteReward
from worlds import REWARDS, WORLDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digit_server(tiny_world):
    """`python -m bench serve` of the tiny world's `digit` reward on a free loopback port; its address."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "serve", "--world", "digits-tiny", "--reward", "digit", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("serving digit of world digits-tiny"):
        process.kill()
        raise AssertionError(f"the server did not start: {line!r} {process.stderr.read() if process.stderr else ''}")
    yield line.split(" at ")[-1].strip()
    process.terminate()
    process.wait(timeout=30)


def test_served_scores_are_the_in_process_scores_bit_for_bit(tiny_world, digit_server):
    local = REWARDS["digit"].from_world(tiny_world)
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = tiny_world.prompts["eval_unseen"][:12]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a cell runs, and the server by default: the same kernels, the same bits
    try:
        with torch.no_grad():
            expected = local(images, prompts)
            in_fives = torch.cat([local(images[i : i + 5], prompts[i : i + 5]) for i in range(0, 12, 5)])
    finally:
        torch.set_num_threads(threads)
    remote = RemoteReward.connect(digit_server, expect="digit")
    assert torch.equal(remote(images, prompts), expected)
    # a call larger than `batch` goes in several requests, each scored as that batch would be in process
    assert torch.equal(RemoteReward.connect(digit_server, batch=5)(images, prompts), in_fives)
    torch.testing.assert_close(in_fives, expected)
    assert (remote.name, remote.version, remote.higher_is_better) == ("digit", local.version, True)
    assert not remote.differentiable


def test_a_run_through_the_server_records_what_the_run_in_process_records(tiny_world, digit_server, tmp_path):
    def results(spec, store_path):
        assert run_cell(spec, store_path) == "done"  # as a sweep runs it: on one torch thread
        with Store(store_path) as store:
            return store.results_frame().drop(columns=["wall_s"]), store.runs_frame()["run_id"].tolist()

    spec = smoke_spec("ddpo")
    in_process = results(spec, tmp_path / "local.sqlite")
    served = results(dataclasses.replace(spec, reward_server=digit_server), tmp_path / "served.sqlite")
    assert served[1] == in_process[1]  # the same run
    assert served[0].equals(in_process[0])  # the same numbers, to the last bit


def test_a_server_of_another_worlds_reward_is_refused_before_any_run(digit_server, capsys, monkeypatch):
    with pytest.raises(
        ValueError, match="serves 'digit' of world 'digits-tiny', not of world 'digits': start one with"
    ):
        RemoteReward.connect(digit_server, expect="digit", world="digits")
    assert RemoteReward.connect(digit_server, world="digits-tiny").world == "digits-tiny"
    # the default suite's world is digits: its digit reward is the full world's, not the tiny one's
    for entry in {type(e) for e in WORLDS.values()}:
        monkeypatch.setattr(entry, "load", lambda *args, **kwargs: pytest.fail("a world loaded"))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "ddpo", "--reward-server", f"digit={digit_server}"])
    error = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(error.splitlines()) == 1
    assert "serves 'digit' of world 'digits-tiny', not of world 'digits'" in error


def test_a_run_recorded_with_another_version_of_its_reward_is_not_reused(tiny_world, tmp_path):
    spec, lines = smoke_spec("base"), []
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "done"
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "reused"
        (run_id,) = store.runs_frame()["run_id"]
        # as if recorded through a server of other code: the same name and run id, another version
        with store._write() as conn:
            conn.execute("UPDATE runs SET config_json = json_set(config_json, '$.reward_version', 'other')")
        assert execute(spec, tiny_world, store, tmp_path, log=lines.append) == "failed"
        assert store.run_status(run_id) == "done"  # what was recorded stays
    assert lines == [
        f"{run_id}: FAILED: recorded with digit version other, not this reward's "
        f"{REWARDS['digit'].from_world(tiny_world).version}: use another --store for it"
    ]


def test_a_server_gone_before_a_cell_fails_that_cell_in_one_line_and_records_nothing(tiny_world, tmp_path):
    spec, lines = dataclasses.replace(smoke_spec("base"), reward_server="http://127.0.0.1:9"), []
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path, log=lines.append) == "failed"
        assert store.runs_frame().empty
    (line,) = lines
    assert line.startswith("base@diffusion digit seed 0: FAILED: no reward server answers at http://127.0.0.1:9 (")


def test_a_method_that_needs_reward_gradients_refuses_a_served_reward(tiny_world, digit_server, tmp_path):
    spec = dataclasses.replace(smoke_spec("rocm"), model="consistency", reward_server=digit_server)
    with Store(tmp_path / "store.sqlite") as store:
        assert execute(spec, tiny_world, store, tmp_path, log=lambda *_: None) == "n/a"
        assert "served over HTTP" in store.runs_frame()["reason"].item()


def test_a_malformed_request_is_refused_in_one_line_and_the_server_goes_on(tiny_world, digit_server):
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((2, 1, 8, 8), dtype=np.float32), prompts=np.array(["a handwritten one"]))
    request = urllib.request.Request(digit_server + "/score", data=buffer.getvalue(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    assert json.loads(refused.value.read())["error"] == "`prompts` must be 2 strings, got <U17 (1,)"
    pickled = io.BytesIO()
    np.save(pickled, np.array([object()], dtype=object), allow_pickle=True)  # an object array: read, it could run code
    request = urllib.request.Request(digit_server + "/score", data=pickled.getvalue(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and "expected an .npz with `images` and `prompts`" in refused.value.read().decode()
    assert RemoteReward.connect(digit_server)(torch.zeros(1, 1, 8, 8), ["a handwritten one"]).shape == (1,)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url + "/score", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())["error"]


def test_what_a_request_may_become_is_bounded_before_it_is_read_and_a_stalled_client_stalls_only_itself(
    digit_server,
):
    stalled = socket.create_connection(urllib.parse.urlsplit(digit_server).netloc.split(":"))  # type: ignore[arg-type]
    stalled.sendall(b"POST /score HTTP/1.1\r\nContent-Le")  # half a request, then silence
    try:
        started = time.monotonic()
        assert RemoteReward.connect(digit_server, timeout=10, retries=0).world == "digits-tiny"
        assert time.monotonic() - started < 5  # served beside the stalled connection, not after it
        # 0.3 MiB that expands to 282 MB of zeros: refused from the archive's table, before anything is decompressed
        bomb = io.BytesIO()
        np.savez_compressed(bomb, images=np.zeros((1_100_000, 1, 8, 8), np.float32), prompts=np.array(["a"]))
        code, error = post(digit_server, bomb.getvalue())
        assert code == 400 and error.startswith("the request expands to 28") and "more than the 268435456" in error
        code, error = post(digit_server, b"x", {"Content-Length": "abc"})
        assert (code, error) == (400, "a body of 1 to 268435456 bytes is needed, got 'abc'")
        nan = io.BytesIO()
        np.savez(nan, images=np.full((1, 1, 8, 8), np.nan, np.float32), prompts=np.array(["a handwritten one"]))
        assert post(digit_server, nan.getvalue()) == (400, "`images` must be finite: some are NaN or infinite")
        large = io.BytesIO()  # a size the world does not draw is refused, not scored as if it were one
        np.savez(large, images=np.zeros((1, 1, 32, 32), np.float32), prompts=np.array(["a handwritten one"]))
        wrong = "`images` must be 1x8x8 (C x H x W), as the served world draws them, got (1, 1, 32, 32)"
        assert post(digit_server, large.getvalue()) == (400, wrong)
    finally:
        stalled.close()


def test_no_server_is_a_clear_error_after_its_retries(capsys):
    with pytest.raises(ConnectionError, match=r"no reward server answers at http://127.0.0.1:9 .*2 tries.*bench serve"):
        RemoteReward.connect("http://127.0.0.1:9", retries=1, timeout=2)
    # on the command line, before any run starts
    with pytest.raises(SystemExit):
        main(["run", "--suite", "smoke", "--method", "ddpo", "--reward-server", "digit=http://127.0.0.1:9"])
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no reward server answers at http://127.0.0.1:9" in error
    with pytest.raises(SystemExit):
        main(["run", "--suite", "smoke", "--reward-server", "beauty=http://127.0.0.1:9"])
    assert "expected NAME=URL with NAME in digit, compress" in capsys.readouterr().err
