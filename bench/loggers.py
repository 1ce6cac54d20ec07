"""Optional experiment loggers (the `loggers` extra): TensorBoard, and Weights & Biases in offline mode.

Chosen per sweep (`--logger tensorboard,wandb`). A run logs its training diagnostics (what its
Trainer's `step()` returns, under `train/`) and every milestone's metrics (under `<split>/`) against
the NFE its training has used, into `<store>.runs/logs/<run_id>/{tensorboard,wandb}/`. W&B never
touches the network: its runs are written offline (`wandb sync` uploads them later, if wanted). The
results store stays the record; loggers are for watching runs.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.store_schema import RunRecord


LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # name -> the package it needs


def check_loggers(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` if every one is known and installed; otherwise a ValueError that says what to do."""
    for name in names:
        if name not in LOGGERS:
            raise ValueError(f"unknown logger {name!r}; valid: {', '.join(LOGGERS)}")
        if importlib.util.find_spec(LOGGERS[name]) is None:
            raise ValueError(f"logger {name!r} needs the {LOGGERS[name]} package: pip install -e '.[loggers]'")
    return names


class RunLogger:
    """One run's loggers; with none chosen, every call does nothing."""

    def __init__(self, names: tuple[str, ...], directory: Path, record: RunRecord):
        self._tensorboard = self._wandb = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(directory / "tensorboard"))
        if "wandb" in names:
            import wandb

            (directory / "wandb").mkdir(parents=True, exist_ok=True)
            self._wandb = wandb.init(
                mode="offline",
                dir=directory / "wandb",
                project=record.suite,
                name=record.run_id,
                config=json.loads(record.config_json),
                settings=wandb.Settings(silent=True, console="off"),
                reinit="create_new",  # one process runs many cells, one W&B run each
            )

    def log(self, values: dict[str, float], nfe: float) -> None:
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, global_step=int(nfe))
        if self._wandb is not None:
            # NFE as a value, not W&B's step: a resumed run repeats steps, which W&B would drop.
            self._wandb.log({**values, "nfe": nfe})

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


class ExperimentLoggers:
    """A sweep's choice of loggers and where they write; `open(record)` gives one run's RunLogger."""

    def __init__(self, names: tuple[str, ...] = (), directory: Path = Path("logs")):
        self.names = check_loggers(tuple(names))
        self.directory = Path(directory)

    def open(self, record: RunRecord) -> RunLogger:
        return RunLogger(self.names, self.directory / record.run_id, record)


NO_LOGGERS = ExperimentLoggers()
"""Logs nothing: the default, and what the processes other than the main one of a data-parallel run get."""
