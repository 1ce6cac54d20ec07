"""An embedded world's networks as the repository ships them: safetensors files (tensors only: reading one runs no
code) beside a copy of the build's manifest, whose SHA-256 weight hashes (`weights_hash`) every result records. A
fresh clone installs them instead of training (most of an hour of a 2-core machine's time becomes seconds);
`bench models` still trains every network from scratch and compares its hashes with these.

Layout: weights/<world>/manifest.json and weights/<world>/<component>.safetensors, one per component, plus the
prompt-embedding cache (prompt_embeddings.safetensors, keyed by prompt, its hash in the manifest's `cache_hash`). The
manifest carries the digest of its own content (`digest`): an edited manifest, or networks shipped without one, are
refused in one line instead of silently training everything again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.io import atomic_torch_save, atomic_write_bytes

SHIPPED = Path(__file__).resolve().parents[1] / "weights"
CACHE = "prompt_embeddings"
"""The one shipped file that is not a network: the prompts' text embeddings, which the build computes first."""


def weights_hash(module: nn.Module | dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and bytes: the version of a set of weights."""
    state = module.state_dict() if isinstance(module, nn.Module) else module
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of a shipped manifest's content, its own `digest` left out."""
    content = {key: value for key, value in manifest.items() if key != "digest"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def shipped_manifest(world: str, root: Path | None = None) -> dict:
    """The shipped manifest of `world` (under `root`, SHIPPED by default), or an empty one where nothing ships; a
    manifest whose content is not its digest's, or networks shipped without a manifest, are a one-line ValueError."""
    folder = (root or SHIPPED) / world
    path = folder / "manifest.json"
    if not path.exists():
        if any(folder.glob("*.safetensors")):
            raise ValueError(f"weights/{world}/ ships networks but no manifest.json: restore it from git")
        return {"components": {}}
    manifest = json.loads(path.read_text())
    if manifest.get("digest") != manifest_digest(manifest):
        raise ValueError(
            f"weights/{world}/manifest.json was edited (its content is not its digest's): restore it from git, or "
            f"rebuild and ship the networks with `python -m bench models --world {world} --ship`"
        )
    return manifest


def ship(built: Path, world: str, manifest: dict, root: Path | None = None) -> Path:
    """Writes the built world's networks (torch .pt state dicts in `built`) and its prompt cache as safetensors
    under root/world, with `manifest` (the build's) and the cache's hash, replacing what was there."""
    root = root or SHIPPED
    out = root / world
    staging = root / f".{world}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shipped = {**manifest}
    for name in [*manifest["components"], CACHE]:
        state = torch.load(built / f"{name}.pt", map_location="cpu", weights_only=True)
        save_file({key: tensor.contiguous() for key, tensor in state.items()}, str(staging / f"{name}.safetensors"))
        if name == CACHE:
            shipped["cache_hash"] = weights_hash(state)
    shipped["digest"] = manifest_digest(shipped)
    atomic_write_bytes(staging / "manifest.json", (json.dumps(shipped, indent=2) + "\n").encode())
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def install(world: str, name: str, directory: Path, expected_hash: str, root: Path | None = None) -> None:
    """Copies shipped component `name` of `world` (a network, or CACHE) into the build directory as the .pt state
    dict the world loads, after checking its weights against `expected_hash`; a mismatch is a one-line error naming
    the file."""
    path = (root or SHIPPED) / world / f"{name}.safetensors"
    state = load_file(str(path))
    if weights_hash(state) != expected_hash:
        raise ValueError(
            f"{path} does not hold the weights its manifest names (hash {weights_hash(state)[:12]}, expected "
            f"{expected_hash[:12]}): restore it from git, or rebuild with `make models`"
        )
    atomic_torch_save(state, directory / f"{name}.pt")
