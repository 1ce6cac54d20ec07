import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world():
    """The digits world with barely trained networks (built once into artifacts/, then reused)."""
    from bench.world import load_world

    return load_world("digits-tiny", log=lambda *_: None)
