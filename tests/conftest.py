import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RLHF_BENCH_DEBUG", "1")  # an unexpected error fails a test with its traceback

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_world():
    """The digits world with barely trained networks (built once into artifacts/, then reused)."""
    from worlds import load_world

    return load_world("digits-tiny", log=lambda *_: None)


# A small suite: base and DDPO on each generator of the tiny world, two of its rewards, two seeds.
SMALL_SWEEP = ["--suite", "smoke", "--method", "base,ddpo", "--reward", "digit,compress", "--seeds", "2"]


@pytest.fixture(scope="session")
def reference_sweep(tmp_path_factory):
    """The small suite run straight through in this process: its store, whose leaderboard every other
    way of running the suite (killed and resumed, parallel workers, Ray) must reproduce."""
    from bench.cli import main

    store = tmp_path_factory.mktemp("reference") / "store.sqlite"
    assert main(["run", *SMALL_SWEEP, "--store", str(store)]) == 0
    return store


# Tiny tokenizers and CLIP models written to disk, for the scale-reward tests (tests/tiny_rewards.py)


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    from models.tiny_pipelines import ascii_clip_tokenizer

    directory = tmp_path_factory.mktemp("clip_tokenizer")
    ascii_clip_tokenizer(directory)
    return directory


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, clip_tokenizer_dir):
    """A CLIPModel.save_pretrained directory that also holds its tokenizer, as hub repositories do."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from models.tiny_pipelines import tiny_clip_config

    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(directory)
    CLIPTokenizer.from_pretrained(clip_tokenizer_dir).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pickscore_dir(tmp_path_factory):
    """Same tiny CLIP (seed 0) with logit_scale = log(50), so PickScore = 50 cos."""
    import math

    import torch
    from transformers import CLIPModel

    from models.tiny_pipelines import tiny_clip_config

    directory = tmp_path_factory.mktemp("pickscore")
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(logit_scale=math.log(50.0))).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bert")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "!",
        *letters,
        *("##" + c for c in letters),
        "red",
        "cat",
        "two",
        "dogs",
        "on",
        "grass",
    ]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory


@pytest.fixture(scope="session")
def pipelines(tmp_path_factory):
    """Directories in diffusers' pipeline layout, written by the pipelines' own save_pretrained (tests/tiny_diffusers.py
    loads them)."""
    from models.tiny_pipelines import write_tiny_pipelines

    return write_tiny_pipelines(tmp_path_factory.mktemp("pipelines"), t5=True)
