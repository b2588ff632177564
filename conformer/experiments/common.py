"""Settings every ``conformer reproduce`` experiment takes, and small shared helpers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conformer.cli_settings import option
from conformer.errors import UserInputError
from conformer.recm import MODES


@dataclasses.dataclass
class ExperimentSettings:
    """Options shared by the ``reproduce`` targets (each target subclasses it)."""

    out: str = option(help="output directory (results.json, table.md, gamma.png); rerunning "
                           "with the same settings resumes, skipping finished runs")
    preset: str = option("tiny", help="size preset")
    modes: str = option(",".join(MODES), help="comma-separated modes to compare")
    steps: int | None = option(None, help="optimiser steps per run",
                               default_text="the preset's")
    workers: int = option(1, help="runs trained in parallel processes")
    threads: int = option(1, help="torch threads per run")

    def check_common(self, presets: dict, allowed_modes: tuple[str, ...]) -> list[str]:
        """Validate the shared options; returns the modes as a list."""
        if self.preset not in presets:
            raise UserInputError(f"--preset {self.preset!r}: choose one of {', '.join(presets)}")
        modes = [m.strip() for m in self.modes.split(",") if m.strip()]
        if not modes or any(m not in allowed_modes for m in modes):
            raise UserInputError(f"--modes {self.modes!r}: choose from {', '.join(allowed_modes)}")
        if self.workers < 1:
            raise UserInputError(f"--workers {self.workers}: need at least 1")
        if self.threads < 1:
            raise UserInputError(f"--threads {self.threads}: need at least 1")
        return modes


def atomic_json(path: Path, payload) -> None:
    """Write ``payload`` as JSON through a temporary file: an interrupted run never leaves a
    half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)


__all__ = ["ExperimentSettings", "atomic_json", "option"]


def override_value(text: str):
    """The value of a command-line ``NAME=VALUE`` override: true/false (any case) as a bool,
    else an int, else a float, else the text itself."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
