"""Training callbacks: per-layer gamma history (CSV every step) and its plot at the end, the
final checkpoint, and the CPU-time budget."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from conformer.recm import controller_of


class GammaHistory(L.Callback):
    """Appends ``step, gamma_0, gamma_1, ...`` to ``RUN/gammas.csv`` after every optimiser
    step and draws ``RUN/gammas.png`` when training ends.

    A resumed run appends to the same file; rows of steps redone after the resume replace the
    earlier ones when the plot is drawn.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / "gammas.csv"
        self._last_step = -1

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # not an optimiser step (accumulation)
            return
        gammas = controller_of(pl_module.net).gammas()
        if not gammas:  # a network without modulated layers
            return
        self._last_step = trainer.global_step
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(["step"] + [f"gamma_{i}" for i in range(len(gammas))])
            writer.writerow([trainer.global_step] + [f"{g:.6g}" for g in gammas])

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        if self.path.exists():
            plot_gammas(self.path, self.path.with_suffix(".png"))


class FinalCheckpoint(L.Callback):
    """Writes ``last.ckpt`` when training ends (ModelCheckpoint only writes on its step
    interval or at epoch ends, so a run stopping at ``max_steps`` mid-epoch would otherwise
    leave a stale ``last.ckpt``). Called on every rank; Lightning writes on rank 0."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path)


class CPUTimeLimit(L.Callback):
    """Stops training once the training process has used ``max_cpu_seconds`` of CPU time
    (``time.process_time()``: user + system seconds of every thread of this process), counted
    from the start of ``fit`` plus what earlier sittings of a resumed run used (kept in the
    checkpoint). ``FinalCheckpoint`` then writes ``last.ckpt``.

    Why CPU and not wall time: on a shared machine wall time measures the other jobs' load;
    with the torch threads fixed, CPU seconds measure the work a recipe was given. Checked
    after every training batch, so a run overshoots by at most one step. Logs
    ``cpu_seconds`` (the running total) every step.
    """

    def __init__(self, max_cpu_seconds: float):
        if not max_cpu_seconds > 0:
            raise ValueError(f"max_cpu_seconds must be > 0, got {max_cpu_seconds!r}")
        self.max_cpu_seconds = float(max_cpu_seconds)
        self.earlier_seconds = 0.0  # used by the sittings before a resume
        self._fit_start: float | None = None

    def used_seconds(self) -> float:
        """CPU seconds of training so far, earlier sittings included."""
        if self._fit_start is None:
            return self.earlier_seconds
        return self.earlier_seconds + time.process_time() - self._fit_start

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        used = self.used_seconds()
        pl_module.log("cpu_seconds", used, batch_size=1)
        if used >= self.max_cpu_seconds:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"cpu_seconds_used": self.used_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier_seconds = float(state_dict.get("cpu_seconds_used", 0.0))
        if self._fit_start is not None:  # restored after fit started: count from now
            self._fit_start = time.process_time()


def read_gamma_history(path: str | Path) -> tuple[list[int], list[list[float]]]:
    """(steps, per-layer gamma series) from a ``gammas.csv``; later rows win per step."""
    rows: dict[int, list[float]] = {}
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        for row in reader:
            if len(row) == len(header):
                rows[int(row[0])] = [float(v) for v in row[1:]]
    steps = sorted(rows)
    series = [[rows[s][i] for s in steps] for i in range(len(header) - 1)]
    return steps, series


def plot_gammas(csv_path: str | Path, png_path: str | Path) -> None:
    """Draw every layer's gamma against the optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, series = read_gamma_history(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for index, values in enumerate(series):
        ax.plot(steps, values, label=f"layer {index}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("gamma")
    ax.set_title("RECM per-layer gamma")
    if series:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
