"""How an embedded world's networks are built, written once for every such world: components, recipes, the build loop
that trains only what is stale, the install of shipped weights, and the training loops the generators share.

A world is a dict of components, name -> `Component`, in build order. A component's recipe (the config fields it
depends on, the seed, and the hashes of the components it learns from) decides whether it is stale; each draws from
its own seed, so building it alone or with the others gives the same weights. The manifest (manifest.json in the
world's directory) records each component's recipe, weight hash (models/shipped.py) and build time.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from models.consistency import ConsistencyPolicy, distillation_grid
from models.diffusion import add_noise
from models.io import atomic_torch_save, atomic_write_bytes
from models.policy import ChainPolicy, DiffusionPolicy, images_to_model_space
from models.progress import progress, relay_to, relayed, say
from models.shipped import CACHE, install, shipped_manifest, weights_hash
from models.text import PromptEncoder

Batches = Callable[[torch.Generator], tuple[torch.Tensor, list[str]]]
"""Draws one training batch from a generator: images (B, C, H, W) in [0, 1] and their prompts."""


class Component(NamedTuple):
    fields: tuple[str, ...]
    """The world config's fields its weights depend on."""
    inputs: tuple[str, ...]
    """The components it learns from (built before it)."""
    build: Callable
    """(cfg, data, built: Built, generator, log) -> the trained network."""
    empty: Callable[..., nn.Module]
    """cfg -> the network untrained, to load weights into."""


def cosine_lr(step: int, total: int, peak: float) -> float:
    return peak * 0.5 * (1 + math.cos(math.pi * step / total))


class Built:
    """The components already available to a build, loaded lazily from the world directory."""

    def __init__(self, directory: Path, components: dict[str, Component], cfg, encoder: PromptEncoder):
        self.directory, self.components, self.cfg, self.encoder = directory, components, cfg, encoder

    def network(self, name: str) -> nn.Module:
        network = self.components[name].empty(self.cfg)
        network.load_state_dict(torch.load(self.directory / f"{name}.pt", map_location="cpu", weights_only=True))
        return network.eval().requires_grad_(False)


def recipe(components: dict[str, Component], name: str, cfg, hashes: dict[str, str]) -> dict:
    """What determines a component's weights: its config fields, the seed, and its inputs' hashes."""
    component = components[name]
    return {
        "seed": cfg.seed,
        **{f: getattr(cfg, f) for f in component.fields},
        **{f"{i}_hash": hashes[i] for i in component.inputs},
    }


def read_manifest(directory: Path, world: str) -> dict:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    return manifest if "components" in manifest else {"world": world, "components": {}}


def stale_components(components: dict[str, Component], directory: Path, cfg, world: str) -> list[str]:
    """The components whose recorded recipe differs from `cfg`'s (or that are missing), in build order."""
    built = read_manifest(directory, world)["components"]
    hashes, stale = {}, []
    for name, component in components.items():
        entry = built.get(name)
        if (
            entry is not None
            and (directory / f"{name}.pt").exists()
            and not any(i in stale for i in component.inputs)
            and entry["recipe"] == recipe(components, name, cfg, hashes)
        ):
            hashes[name] = entry["hash"]
        else:
            stale.append(name)
    return stale


def install_shipped(components: dict[str, Component], directory: Path, cfg, world: str) -> list[str]:
    """Installs into `directory` the shipped networks of `world` (models/shipped.py) of every stale component whose
    shipped recipe is `cfg`'s, checking each against its hash; returns their names (none where nothing ships)."""
    shipped = shipped_manifest(world)
    if not shipped["components"]:
        return []
    stale = stale_components(components, directory, cfg, world)
    directory.mkdir(parents=True, exist_ok=True)
    manifest, installed = read_manifest(directory, world), []
    for name in stale:  # in build order: a component's inputs are settled before its recipe is compared
        hashes = {n: e["hash"] for n, e in manifest["components"].items() if n not in stale or n in installed}
        entry = shipped["components"].get(name)
        inputs_known = all(i in hashes for i in components[name].inputs)
        if entry is None or not inputs_known or entry["recipe"] != recipe(components, name, cfg, hashes):
            continue
        install(world, name, directory, entry["hash"])
        manifest["components"][name] = entry
        atomic_write_bytes(directory / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        installed.append(name)
    # the cache goes with the shipped networks: installed beside them, or again where it alone is missing
    same = all(manifest["components"].get(n, {}).get("hash") == e["hash"] for n, e in shipped["components"].items())
    if (installed or same) and not (directory / f"{CACHE}.pt").exists():
        install(world, CACHE, directory, shipped["cache_hash"])
    return installed


class BuildInputs(NamedTuple):
    """What building a world's components takes, besides its config."""

    components: dict[str, Component]
    data: Any
    """The world's data, handed to every component's build."""
    encoder: PromptEncoder
    """Holds every prompt's embedding (saved as the prompt cache)."""
    assess: Callable[[str, nn.Module], dict]
    """(name, network) -> the figures recorded beside a component's hash (e.g. a classifier's test accuracy)."""


Inputs = Callable[[Any, dict | None], BuildInputs]
"""(cfg, a prompt cache or None) -> the build's inputs. A module-level function, so that a build's worker processes
can be handed it; given the cache the build saved, a worker's encoder holds exactly the build's embeddings."""


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Inside, torch computes on `threads` threads (None: as it was)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_component(given: BuildInputs, name: str, out_dir: Path, cfg, hashes: dict[str, str], log=print) -> dict:
    """Trains one component (its inputs already in `out_dir`, `hashes` holding theirs), saves it, and returns its
    manifest entry. Its random draws come from its own seed alone, so it builds the same in any process."""
    seed = (cfg.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63
    torch.manual_seed(seed)  # network initialisation draws from the global generator
    log(f"building {name}")
    start = time.monotonic()
    built = Built(out_dir, given.components, cfg, given.encoder)
    network = given.components[name].build(cfg, given.data, built, torch.Generator().manual_seed(seed), log)
    atomic_torch_save(network.state_dict(), out_dir / f"{name}.pt")
    return {
        "recipe": recipe(given.components, name, cfg, hashes),
        "hash": weights_hash(network),
        "build_seconds": round(time.monotonic() - start, 1),
        **given.assess(name, network),
    }


_worker_inputs: dict[tuple, BuildInputs] = {}  # in a build's worker process: its inputs, made once


def _start_builder(lines, threads: int | None) -> None:
    relay_to(lines)
    if threads is not None:
        torch.set_num_threads(threads)


def _build_in_worker(inputs: Inputs, name: str, out_dir: Path, cfg, hashes: dict[str, str]) -> dict:
    key = (inputs.__module__, inputs.__qualname__, cfg, out_dir)
    if key not in _worker_inputs:
        cache = torch.load(out_dir / f"{CACHE}.pt", map_location="cpu", weights_only=True)
        _worker_inputs[key] = inputs(cfg, cache)
    return build_component(_worker_inputs[key], name, out_dir, cfg, hashes, say)


def build_components(
    world: str, inputs: Inputs, out_dir: Path, cfg, log=print, workers: int = 1, threads: int | None = None
) -> dict:
    """Trains every stale component into `out_dir` and records it in the manifest (after each, so an interrupted or
    failed build keeps what it finished), each on `threads` torch threads. With `workers` > 1 and `threads` set,
    components whose inputs are built train side by side, each in a worker process of its own (spawned, as the
    sweep's are); each draws from its own seed only, so they build the same weights as one process does. With
    `threads` None (torch's default, every core) the build stays in one process: its weights depend on the thread
    count, and workers sharing the cores would each compute on all of them (measured on 2 cores: 2 workers of 2
    threads trained the digits denoiser about 7 times slower than one process)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    given = inputs(cfg, None)
    atomic_torch_save(given.encoder.cache, out_dir / f"{CACHE}.pt")
    manifest = read_manifest(out_dir, world)
    stale = stale_components(given.components, out_dir, cfg, world)

    def hashes() -> dict[str, str]:
        return {n: e["hash"] for n, e in manifest["components"].items()}

    def record(name: str, entry: dict) -> None:
        built = {**manifest["components"], name: entry}
        manifest["components"] = {n: built[n] for n in given.components if n in built}  # in build order
        atomic_write_bytes(out_dir / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())

    if workers == 1 or len(stale) == 1 or threads is None:
        with torch_threads(threads):
            for name in stale:
                record(name, build_component(given, name, out_dir, cfg, hashes(), log))
        return manifest
    # spawn, not fork: a forked child would inherit this process's torch thread pools and locks
    context = multiprocessing.get_context("spawn")
    lines = context.Queue()
    waiting, running, failure = list(stale), {}, None
    with (
        relayed(lines),
        ProcessPoolExecutor(workers, mp_context=context, initializer=_start_builder, initargs=(lines, threads)) as pool,
    ):
        while waiting or running:
            ready = [n for n in waiting if not set(given.components[n].inputs) & {*waiting, *running.values()}]
            for name in ready if failure is None else []:
                waiting.remove(name)
                running[pool.submit(_build_in_worker, inputs, name, out_dir, cfg, hashes())] = name
            if not running:
                break  # a failure left components waiting for it
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    record(name, future.result())
                except Exception as error:  # the others still finish and are recorded
                    failure = failure or error
    if failure is not None:
        raise failure
    return manifest


@dataclass(frozen=True)
class WorldRecipe:
    """What an embedded world builds: its components, its generators and its build, under the world's name (the
    manifest's); worlds/embedded.py installs, builds and checks any world from one of these."""

    world: str
    components: dict[str, Component]
    generators: dict[str, tuple[str, type[ChainPolicy]]]
    """Model name a run chooses -> (component, policy class)."""
    inputs: Inputs
    """What its build takes (`BuildInputs`)."""
    threads: int | None = None
    """Torch threads each component trains on (None: torch's default). One makes the weights independent of the
    machine's core count (the float sums' order depends on it) and keeps a build beside other work from stalling on
    a busy core."""

    def build(self, out_dir: Path, cfg: Any, log=print, workers: int = 1) -> dict:
        """Trains every stale component into `out_dir` (`build_components`); returns the manifest."""
        return build_components(self.world, self.inputs, out_dir, cfg, log, workers, self.threads)

    def read_manifest(self, directory: Path) -> dict:
        return read_manifest(directory, self.world)

    def stale(self, directory: Path, cfg: Any) -> list[str]:
        return stale_components(self.components, directory, cfg, self.world)

    def install_shipped(self, directory: Path, cfg: Any, shipped_as: str) -> list[str]:
        return install_shipped(self.components, directory, cfg, shipped_as)

    def network(self, component: str, cfg: Any, state: dict) -> nn.Module:
        """A component's network holding `state`."""
        network = self.components[component].empty(cfg)
        network.load_state_dict(state)
        return network


def train_generator(
    model: nn.Module,
    ema: nn.Module,
    policy: ChainPolicy,
    batches: Batches,
    steps: int,
    lr: float,
    ema_decay: float,
    generator: torch.Generator,
    log=print,
    clip: float | None = None,
    loss: Callable[[torch.Tensor, list[str], torch.Generator], torch.Tensor] | None = None,
) -> nn.Module:
    """Trains `policy` (whose network is `model`) from scratch with `loss` (images, prompts, generator) -> a scalar,
    by default its family's own (the denoising loss, flow matching), on `batches`, AdamW with a cosine decay from
    `lr` (the gradient's norm clipped to `clip`, if given); returns `ema` (a copy of `model` at the start) holding
    the exponential moving average of its weights."""
    objective = policy.loss if loss is None else loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.monotonic()
    for step in progress(range(steps), desc=policy.family):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        batch_images, batch_prompts = batches(generator)
        value = objective(batch_images, batch_prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1 - ema_decay)
        if (step + 1) % 1000 == 0:
            log(f"  {policy.family} step {step + 1}/{steps} loss {value.item():.4f} ({time.monotonic() - start:.0f}s)")
    return ema.eval()


def distillation_loss(
    student: ConsistencyPolicy,
    teacher: DiffusionPolicy,
    target: nn.Module,
    images: torch.Tensor,
    prompts: list[str],
    generator: torch.Generator,
) -> torch.Tensor:
    """Consistency distillation (LCM's, without guidance): on adjacent grid timesteps t_n > t_{n-1},
    E ||f_student(x_{t_n}, t_n) - f_target(x_hat_{t_{n-1}}, t_{n-1})||^2, where x_hat is one DDIM (ODE)
    step of the teacher from x_{t_n} and f_target is the slow (EMA) copy of the student. A scalar."""
    x0 = images_to_model_space(images)
    grid = distillation_grid(student.schedule.num_train_timesteps)
    n = torch.randint(1, len(grid), (len(x0),), generator=generator)
    t_high, t_low = grid[n], grid[n - 1]
    a_high = student.alphas_cumprod[t_high].float().view(-1, 1, 1, 1)
    a_low = student.alphas_cumprod[t_low].float().view(-1, 1, 1, 1)
    text = student.encoder(prompts)
    x_high = add_noise(x0, torch.randn(x0.shape, generator=generator), student.alphas_cumprod[t_high])
    with torch.no_grad():
        eps = teacher.network(x_high, t_high, text)
        x0_teacher = (x_high - (1 - a_high).sqrt() * eps) / a_high.sqrt()
        x_low = a_low.sqrt() * x0_teacher + (1 - a_low).sqrt() * eps
        goal = student.predict_x0(x_low, t_low, text, network=target)
    return ((student.predict_x0(x_high, t_high, text) - goal) ** 2).mean()


def distill_consistency(
    teacher: DiffusionPolicy,
    batches: Batches,
    steps: int,
    lr: float,
    target_decay: float,
    generator: torch.Generator,
    log=print,
) -> nn.Module:
    """Distils a consistency model from a base denoiser (initialised from it) on `batches`; returns the target
    network (the slow copy, decay `target_decay`, that provides the distillation targets)."""
    student = ConsistencyPolicy(copy.deepcopy(teacher.network).train().requires_grad_(True), teacher.encoder)
    target = copy.deepcopy(student.network).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.network.parameters(), lr=lr, weight_decay=0.0)
    start = time.monotonic()
    for step in progress(range(steps), desc="consistency"):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr)
        batch_images, batch_prompts = batches(generator)
        loss = distillation_loss(student, teacher, target, batch_images, batch_prompts, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p_target, p in zip(target.parameters(), student.network.parameters()):
                p_target.lerp_(p, 1 - target_decay)
        if (step + 1) % 1000 == 0:
            log(f"  consistency step {step + 1}/{steps} loss {loss.item():.5f} ({time.monotonic() - start:.0f}s)")
    return target.eval()
