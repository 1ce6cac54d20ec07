"""What the command line names and checks, known without importing torch or a world: the suites, the methods with
their options (type, default, range, docstring), the rewards, the worlds and their models, the loggers.

Building it from the registries imports every method, reward and world (seconds: torch, transformers, torchmetrics),
so `catalog()` keeps it in a cache, artifacts/cli-catalog.json, under a key of the code it describes: every source
file of the packages and of any installed package that adds entry points (models/installed.py). With the cache fresh,
`python -m bench` parses and answers bad input before anything heavy is imported; a stale or missing cache is
rebuilt from the registries and written again. The cache is JSON: reading it runs no code.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from bench.names import check_entry
from methods.options import Bounds
from models.installed import GROUPS
from models.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "artifacts" / "cli-catalog.json"
PACKAGES = ("bench", "methods", "models", "rewards", "worlds")
SCHEMA = 1


@dataclass(frozen=True)
class Option:
    """One option of a method's Config, as the command line reads and documents it."""

    name: str
    annotation: str
    """The field's declared type as text (methods/options.py: parse_option reads by it)."""
    default: str
    """The default as the help shows it."""
    bounds: Bounds | None
    doc: str
    search: str = ""
    """The range tuning searches it over (Trainer.search_space), as text; "" where it is not searched."""


@dataclass(frozen=True)
class Method:
    summary: str
    """The first line of the Trainer's docstring (the help's group title)."""
    families: tuple[str, ...]
    options: tuple[Option, ...]


@dataclass(frozen=True)
class Catalog:
    suites: tuple[str, ...]
    sized_suites: tuple[str, ...]
    """The suites with a CPU-sized twin (`run --smoke`)."""
    methods: dict[str, Method]
    rewards: tuple[str, ...]
    worlds: tuple[str, ...]
    models: dict[str, str]
    """Every world's generators, with their family."""
    scale_models: tuple[str, ...]
    """The scale world's generators: what --source replaces and the GPU throughput benchmark builds."""
    cpu_methods: tuple[str, ...]
    """The methods the CPU throughput benchmark times (bench/throughput/cpu.py)."""
    loggers: tuple[str, ...]

    @classmethod
    def from_registries(cls) -> Catalog:
        """The catalog as the registries hold it now (imports every method, reward and world)."""
        from bench.experiments import SUITES
        from bench.loggers import LOGGERS
        from bench.throughput.cpu import CPU_METHODS
        from methods import METHODS
        from worlds import MODEL_FAMILIES, REWARDS, WORLDS

        methods = {}
        for name, method in METHODS.items():
            docs = field_docs(method.Config)
            options = tuple(
                Option(
                    f.name,
                    str(f.type),
                    str(f.default),
                    f.metadata.get("bounds"),
                    docs.get(f.name, ""),
                    str(method.search_space[f.name]) if f.name in method.search_space else "",
                )
                for f in dataclasses.fields(method.Config)
            )
            summary = (method.__doc__ or "").strip().split("\n")[0]
            methods[name] = Method(summary, tuple(method.families), options)
        return cls(
            suites=tuple(SUITES),
            sized_suites=tuple(n for n, make in SUITES.items() if "smoke" in inspect.signature(make).parameters),
            methods=methods,
            rewards=tuple(REWARDS),
            worlds=tuple(WORLDS),
            models=dict(MODEL_FAMILIES),
            scale_models=tuple(WORLDS["scale"].models),
            cpu_methods=CPU_METHODS,
            loggers=tuple(LOGGERS),
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        def option(o: dict) -> Option:
            return Option(**{**o, "bounds": Bounds(**o["bounds"]) if o["bounds"] is not None else None})

        methods = {
            name: Method(m["summary"], tuple(m["families"]), tuple(option(o) for o in m["options"]))
            for name, m in data["methods"].items()
        }
        names = ("suites", "sized_suites", "rewards", "worlds", "scale_models", "cpu_methods", "loggers")
        tuples = {k: tuple(data[k]) for k in names}
        return cls(methods=methods, models=dict(data["models"]), **tuples)

    def check_entry(self, entry: str) -> None:
        """bench/names.py's check_entry over this catalog's methods and every world's models."""
        check_entry(entry, {name: method.families for name, method in self.methods.items()}, self.models)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (attribute docstrings are not kept at runtime), read from the
    source of its classes once per process: a field redeclared without one keeps its base class's (a shared option
    at another default)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        definition = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0]
        if not isinstance(definition, ast.ClassDef):
            raise TypeError(f"the source of {klass.__qualname__} is not a class definition")
        body = definition.body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@functools.cache
def code_key() -> str:
    """A hash of everything the catalog is made from: this Python, the packages' source files, and the entry points
    that installed packages declare with those packages' source files. Read once per process, as the code it hashes
    is loaded once: a forked child that may not read the source files (tests/test_store.py) reuses it."""
    digest = hashlib.sha256(f"{SCHEMA}:{sys.version}".encode())
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    for group in GROUPS:
        for point in sorted(entry_points(group=group), key=lambda p: (p.name, p.value)):
            digest.update(f"{group}:{point.name}={point.value}".encode())
            if point.dist is not None:
                files += sorted(Path(str(f.locate())) for f in point.dist.files or () if f.suffix == ".py")
    for path in files:
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def catalog(cache: Path = CACHE) -> tuple[Catalog, bool]:
    """The catalog and whether it came from a fresh cache (else it was built from the registries and the cache
    written again, where the folder can be written)."""
    key = code_key()
    try:
        data = json.loads(cache.read_text())
        if data["key"] == key:
            return Catalog.from_json(data["catalog"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, unreadable or of another layout: rebuilt below
    built = Catalog.from_registries()
    with contextlib.suppress(OSError):  # a read-only checkout: the command line works, only without the fast path
        atomic_write_bytes(cache, json.dumps({"key": key, "catalog": built.to_json()}, indent=1).encode())
    return built, False
