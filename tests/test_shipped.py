"""The networks the repository ships (weights/, models/shipped.py): a fresh checkout installs them instead of
training, refuses a file that does not hold the weights its manifest names, and `bench models` rebuilds every
network and says which differ from the shipped ones."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import models.shipped
from models.shipped import SHIPPED, install, ship, shipped_manifest, weights_hash
from worlds import world_entry
from worlds.digits.build import COMPONENTS, RECIPE, tiny_world_config


def test_a_fresh_checkout_installs_the_shipped_networks_and_trains_none(tmp_path, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a shipped network was trained again")

    monkeypatch.setattr("models.build.build_components", no_build)
    said = []
    directory = world_entry("digits").ensure("digits", tmp_path, said.append)
    shipped = shipped_manifest("digits")
    assert said == [
        "installed the shipped reward_classifier, judge, kernel_judge, denoiser, consistency, flow of world 'digits' "
        "(weights/digits/, hashes checked)"
    ]
    for name, entry in shipped["components"].items():
        state = torch.load(directory / f"{name}.pt", weights_only=True)
        assert weights_hash(state) == entry["hash"]
    assert world_entry("digits").ensure("digits", tmp_path, said.append) == directory and len(said) == 1


def test_a_shipped_file_that_does_not_hold_its_manifests_weights_is_refused(tmp_path):
    shutil.copytree(SHIPPED / "digits", tmp_path / "digits")
    path = tmp_path / "digits" / "judge.safetensors"
    state = load_file(str(path))
    first = sorted(state)[0]
    state[first] = state[first] + 1e-6
    save_file(state, str(path))
    expected = shipped_manifest("digits")["components"]["judge"]["hash"]
    with pytest.raises(ValueError, match=r"judge.safetensors does not hold the weights its manifest names"):
        install("digits", "judge", tmp_path / "out", expected, root=tmp_path)


def test_an_edited_manifest_or_networks_without_one_are_refused_and_a_lost_cache_installs_again(tmp_path, monkeypatch):
    shutil.copytree(SHIPPED / "digits", tmp_path / "digits")
    assert shipped_manifest("digits", tmp_path) == shipped_manifest("digits")
    path = tmp_path / "digits" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["components"]["judge"]["recipe"]["classifier_steps"] = (
        30  # a hand edit: the code would rebuild it for 14 minutes
    )
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(ValueError, match=r"^weights/digits/manifest.json was edited .*: restore it from git"):
        shipped_manifest("digits", tmp_path)
    path.unlink()
    with pytest.raises(ValueError, match=r"^weights/digits/ ships networks but no manifest.json: restore it from git"):
        shipped_manifest("digits", tmp_path)

    # installed, then the prompt cache alone lost (as after a tampered cache restored from git): installed again
    def no_build(*args, **kwargs):
        raise AssertionError("a shipped network was trained again")

    monkeypatch.setattr("models.build.build_components", no_build)
    directory = world_entry("digits").ensure("digits", tmp_path / "artifacts", lambda *_: None)
    (directory / "prompt_embeddings.pt").unlink()
    assert world_entry("digits").ensure("digits", tmp_path / "artifacts", lambda *_: None) == directory
    cache = torch.load(directory / "prompt_embeddings.pt", weights_only=True)
    assert weights_hash(cache) == shipped_manifest("digits")["cache_hash"]


@pytest.mark.slow
def test_bench_models_rebuilds_every_network_and_names_those_that_differ_from_the_shipped(tmp_path, monkeypatch):
    entry = world_entry("digits-tiny")
    built = entry.ensure("digits-tiny", tmp_path / "artifacts", print)
    shipped_root = tmp_path / "weights"
    ship(built, "digits-tiny", RECIPE.read_manifest(built), root=shipped_root)
    monkeypatch.setattr(models.shipped, "SHIPPED", shipped_root)
    entry.prepare("digits-tiny", tmp_path / "artifacts", print)  # the same machine rebuilds the same weights
    manifest_path = shipped_root / "digits-tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["components"]["flow"]["hash"] = "0" * 64
    manifest_path.write_text(json.dumps({**manifest, "digest": models.shipped.manifest_digest(manifest)}))
    with pytest.raises(ValueError, match=r"the rebuilt flow \(built \w{12}, shipped 000000000000\) differ"):
        entry.prepare("digits-tiny", tmp_path / "artifacts", print)


@pytest.mark.slow  # over 10 s on 2 cores (make test-all runs it)
def test_a_world_whose_networks_train_on_every_core_builds_in_one_process(tmp_path, monkeypatch):
    # its weights depend on the thread count, and side-by-side workers would each compute on every core
    def no_workers(*args, **kwargs):
        raise AssertionError("worker processes were started")

    monkeypatch.setattr("models.build.ProcessPoolExecutor", no_workers)
    assert RECIPE.threads is None
    manifest = RECIPE.build(tmp_path, tiny_world_config(), log=lambda *_: None, workers=2)
    assert list(manifest["components"]) == list(COMPONENTS)


def test_a_built_network_that_is_missing_or_cut_short_is_refused_naming_it_and_the_remedy(tmp_path):
    from worlds.embedded import load_weights

    torch.save({"weight": torch.ones(64, 64)}, tmp_path / "judge.pt")
    assert torch.equal(load_weights(tmp_path, "judge")["weight"], torch.ones(64, 64))
    data = (tmp_path / "judge.pt").read_bytes()
    (tmp_path / "judge.pt").write_bytes(data[: len(data) // 2])
    for name in ("judge", "missing"):
        with pytest.raises(ValueError, match=f"{tmp_path / name}.pt cannot be read .*; delete {tmp_path} and the next"):
            load_weights(tmp_path, name)
