import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world():
    """The digits world with barely trained networks (built once into artifacts/, then reused)."""
    from worlds import load_world

    return load_world("digits-tiny", log=lambda *_: None)


# A small suite: base and DDPO on each generator of the tiny world, both rewards, two seeds.
SMALL_SWEEP = ["--suite", "smoke", "--method", "base,ddpo", "--seeds", "2"]


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory):
    """The small suite run straight through in this process: its store, whose leaderboard every other
    way of running the suite (killed and resumed, parallel workers, Ray) must reproduce."""
    from bench.cli import main

    store = tmp_path_factory.mktemp("reference") / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0
    return store
