"""What every embedded world shares: generators built here (models/build.py's `WorldRecipe`), installed from the
weights the repository ships (weights/<world>/, models/shipped.py) where their recipe is the world's, built where
not, and rebuilt from scratch by `bench models` to check the shipped hashes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from models.build import WorldRecipe
from models.policy import ChainPolicy, Policy
from models.shipped import ship as ship_world
from models.shipped import shipped_manifest
from models.text import PromptEncoder


def load_weights(directory: Path, name: str) -> dict:
    """A built network's state from the world's folder; one that is missing, truncated or not a state of tensors
    (weights_only: reading it runs no code) is refused naming it and the remedy."""
    path = directory / f"{name}.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, cut short, tampered: every way the file fails to read
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
        raise ValueError(
            f"{path} cannot be read ({reason}); delete {directory} and the next command installs the shipped "
            "networks again (or rebuilds them)"
        ) from None


@dataclass
class EmbeddedWorld:
    """The generator half of a loaded embedded world (worlds/base.World); a world adds its evaluation."""

    name: str
    config: Any
    manifest: dict
    generator_states: dict[str, dict]
    encoder: PromptEncoder
    recipe: ClassVar[WorldRecipe]

    def sample_metrics(self, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
        """None beside score_images' (a world that reads more from its samples says so: worlds/base.World)."""
        return {}

    def hash_of(self, component: str) -> str:
        return self.manifest["components"][component]["hash"]

    def _generator(self, model: str, source: str = "") -> tuple[str, type[ChainPolicy]]:
        if source:
            raise ValueError(f"world {self.name!r} builds its generators here: no checkpoint replaces them")
        generators = self.recipe.generators
        if model not in generators:
            raise ValueError(f"unknown model {model!r} in world {self.name!r}; valid: {', '.join(generators)}")
        return generators[model]

    def model_hash(self, model: str, source: str = "") -> str:
        """The weight hash of a generator: the identity of the base model a run starts from."""
        return self.hash_of(self._generator(model, source)[0])

    def make_policy(self, model: str, source: str = "", *, full_finetune: bool = False) -> Policy:
        """A fresh, trainable copy of one of the world's generators: every weight trains, whatever `full_finetune`."""
        component, policy_class = self._generator(model, source)
        return policy_class(self.recipe.network(component, self.config, self.generator_states[model]), self.encoder)


@dataclass(frozen=True)
class EmbeddedEntry:
    """A registered embedded world: its recipe and config (how its networks are trained)."""

    config: Any
    recipe: ClassVar[WorldRecipe]
    cells_side_by_side = True
    gpus_per_cell = 0.0
    takes_sources = False
    shards = False  # networks of a few megabytes: nothing to split

    @property
    def models(self) -> dict[str, str]:
        return {model: policy_class.family for model, (_, policy_class) in self.recipe.generators.items()}

    def generator_class(self, model: str) -> type:
        return self.recipe.generators[model][1]

    def prompt_group(self, prompt: str) -> str:
        return ""

    def generator_states(self, directory: Path) -> dict[str, dict]:
        return {model: load_weights(directory, component) for model, (component, _) in self.recipe.generators.items()}

    def frozen(self, directory: Path, component: str) -> torch.nn.Module:
        """A built component other than a generator (a reward's network, the judge), frozen."""
        network = self.recipe.network(component, self.config, load_weights(directory, component))
        return network.eval().requires_grad_(False)

    def ensure(self, name: str, root: Path, log=print) -> Path:
        """The shipped networks (weights/<name>/) where their recipe is this world's, built where not."""
        directory = root / name
        installed = self.recipe.install_shipped(directory, self.config, name)
        if installed:
            log(f"installed the shipped {', '.join(installed)} of world {name!r} (weights/{name}/, hashes checked)")
        stale = self.recipe.stale(directory, self.config)
        if stale:
            log(f"building {', '.join(stale)} of world {name!r} into {directory} (once; later runs reuse them)")
            self.recipe.build(directory, self.config, log=log)
        return directory

    def prepare(self, name: str, root: Path, log=print, ship: bool = False, workers: int = 1) -> None:
        """Trains every network from scratch into <root>/<name>-rebuilt, `workers` side by side, and compares its
        hashes with the shipped manifest's; with `ship`, the rebuilt networks become the shipped ones. A world that
        ships none is built in place, as `ensure` does."""
        shipped = shipped_manifest(name)
        if not shipped["components"] and not ship:
            self.ensure(name, root, log)
            return
        rebuilt = root / f"{name}-rebuilt"
        shutil.rmtree(rebuilt, ignore_errors=True)
        log(f"building every network of world {name!r} from scratch into {rebuilt}")
        manifest = self.recipe.build(rebuilt, self.config, log, workers)
        if ship:
            log(f"shipped the rebuilt networks as {ship_world(rebuilt, name, manifest)}")
            return
        differ = []
        for component, entry in manifest["components"].items():
            expected = shipped["components"].get(component, {}).get("hash", "(none)")
            same = entry["hash"] == expected
            log(f"  {component}: {'same as shipped' if same else 'DIFFERS from shipped'} ({entry['hash'][:12]})")
            if not same:
                differ.append(f"{component} (built {entry['hash'][:12]}, shipped {expected[:12]})")
        if differ:
            raise ValueError(
                f"the rebuilt {', '.join(differ)} differ from the shipped weights of world {name!r}: the build is "
                "deterministic on one kind of CPU, but another CPU or torch build sums floats in another order "
                "(vector width, threads), which moves the weights' last bits and training compounds them; results "
                "record the hash they ran with, and runs keep using the shipped weights"
            )
