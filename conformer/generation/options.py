"""Settings of one generation run, shared by ``conformer generate`` and ``conformer.generate``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conformer.cli_settings import option
from conformer.diffusion.guidance import GuidanceSettings
from conformer.errors import UserInputError
from conformer.generation.inputs import InputLine

METHODS = ("model", "etkdg", "etkdg-mmff")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
DEFAULT_NUM_CONFS = 10  # when neither --num-confs nor an n_conformers column gives a count


@dataclass
class GenerateOptions:
    """Settings of ``conformer generate`` and ``conformer.generate``: each field with help is
    a CLI option (``--num-confs`` for ``num_confs``, see ``conformer.cli_settings``) whose
    default and help text are read from here, and the API's keyword defaults are too."""

    method: str = option("model", choices=METHODS,
                         help="model (the diffusion model), etkdg (RDKit ETKDGv3) or etkdg-mmff "
                              "(ETKDG then MMFF94 minimisation)")
    ckpt: str | None = option(None, help="model file or training checkpoint",
                              default_text="the bundled model in conformer/assets/, which is "
                                           "not a GEOM-Drugs model")
    num_confs: int | None = option(
        None, help="conformers per molecule (overrides --ratio)",
        default_text=f"ratio x n_conformers where the CSV has it, else {DEFAULT_NUM_CONFS}")
    ratio: float = option(2.0, help="conformers per molecule = ceil(RATIO x n_conformers) for "
                                    "CSV rows with n_conformers, as the GEOM protocol asks")
    steps: int | None = option(
        None, help="Heun steps of the sampler's ODE (2 x steps - 1 network evaluations); the "
                   "model file's refinement steps, one evaluation each, still follow",
        default_text="the model file's sampler: its diffusion_settings.sample_steps ODE steps, "
                     "then its refine_steps refinement steps; the bundled model's are in the "
                     "README, 'The bundled model'")
    batch_size: int = option(64, help="conformers sampled together in one batch (memory vs "
                                      "speed)")
    device: str = option("auto", help="torch device: auto (CUDA when torch sees a GPU, else the "
                                      "CPU), cpu, cuda, cuda:1, ...; a device that is not there "
                                      "is an error before any output is written")
    seed: int = option(0, help="random seed (per molecule: seed and input line)")
    hydrogens: bool = option(True, flag="--no-hydrogens",
                             help="write heavy atoms only (generation always uses hydrogens)")
    workers: int | None = option(
        None, help="CPU cores to use. RDKit methods: worker processes. Model: on the CPU, "
                   "worker processes, each sampling and polishing whole molecules on one "
                   "thread; on a GPU, threads that polish with MMFF94 while the GPU samples the "
                   "next molecule (see --model-parallelism). The conformers do not depend on "
                   "it (up to float rounding)",
        default_text="every core this process may use (conformer.generate: 1)")
    model_parallelism: str = option(
        "auto", choices=["auto", "processes", "threads"],
        help="model method with --workers >= 2: processes (worker processes, one thread each; "
             "the CPU default) or threads (one process: the sampler on half the threads, "
             "the MMFF94 polish of the previous molecule beside it on the rest; the GPU "
             "default). auto picks by device")
    max_atoms: int = option(400, help="molecules with more atoms (hydrogens included) go to the "
                                      "failures file")
    max_resamples: int = option(3, help="rounds of resampling for conformers with wrong stereo "
                                        "that a reflection cannot fix")
    # see conformer/diffusion/guidance.py
    stereo_guidance: bool = option(
        True, negatable=True,
        help="model method: steer the sampler towards the input's tetrahedral and E/Z stereo; "
             "--no-stereo-guidance gives the raw model's samples (reflection/resampling still "
             "apply afterwards). Recorded in each SDF record and in the summary")
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)  # not a CLI option
    # see conformer/generation/domain.py; off only to inspect a model's raw output
    bond_check: bool = option(
        True, flag="--no-bond-check",
        help="keep conformers with a bond shorter than 0.6 or longer than 1.5 times the sum of "
             "its atoms' covalent radii (by default they are dropped, never written, and "
             "counted in the summary; a molecule left without conformers goes to the failures "
             "file)")
    # see conformer/generation/hydrogens.py
    relax_hydrogens: bool = option(
        False, help="heavy-atom-only models (trained with data.hydrogens=implicit): minimise the "
                    "hydrogens RDKit places with MMFF94, heavy atoms fixed (slower; no effect on "
                    "other models)")
    # see conformer/generation/relax.py
    mmff: bool = option(
        True, negatable=True,
        help="model method: minimise every conformer with MMFF94, all atoms (at most 2,000 "
             "iterations, as --method etkdg-mmff does), before the stereo and bond checks; "
             "--no-mmff writes the model's samples as drawn. A molecule MMFF94 cannot type "
             "keeps its samples as drawn. Recorded per record as mmff and mmff_unconverged. "
             "The RDKit methods ignore it (etkdg-mmff is ETKDG with this polish)")
    energies: str | None = option(
        None, choices=["mmff"],
        help="mmff: write each conformer's MMFF94 energy (kcal/mol, single point of the "
             "conformer as written, not minimised) as mmff94_energy and "
             "mmff94_relative_energy (above the molecule's lowest), and sort the conformers by "
             "it, lowest first")
    # see conformer/generation/output.py
    prune_rms: float | None = option(
        None, metavar="A",
        help="drop conformers within A Angstrom heavy-atom RMSD (after superposition) of one "
             "kept before them, as RDKit's pruneRmsThresh: the first of each cluster is kept "
             "(the lowest in energy with --energies); pruned_conformers gives the count. "
             "Output conformers are always aligned to the first on their heavy atoms and "
             "written with Kekule bonds")
    progress: bool | None = option(None, flag="--no-progress", const=False,
                                   help="no progress bar",
                                   default_text="a bar when stderr is a terminal")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserInputError(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        if self.num_confs is not None and self.num_confs < 1:
            raise UserInputError(f"--num-confs {self.num_confs}: must be at least 1")
        if self.ratio <= 0:
            raise UserInputError(f"--ratio {self.ratio}: must be positive")
        if self.batch_size < 1:
            raise UserInputError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.energies is not None and self.energies not in ("mmff",):
            raise UserInputError(f"--energies {self.energies}: the only choice is mmff")
        if self.prune_rms is not None and not self.prune_rms > 0:
            raise UserInputError(f"--prune-rms {self.prune_rms}: must be a positive RMSD in "
                                 "Angstrom")
        if self.model_parallelism not in ("auto", "processes", "threads"):
            raise UserInputError(f"--model-parallelism {self.model_parallelism}: choose auto, "
                                 "processes or threads")
        if self.workers is not None and self.workers < 1:
            raise UserInputError(f"--workers {self.workers}: must be at least 1")

    @property
    def cores(self) -> int:
        """``workers``, or when unset every core this process may use."""
        return self.workers if self.workers is not None else usable_cores()
        if self.steps is not None and self.steps < 1:
            raise UserInputError(f"--steps {self.steps}: must be at least 1")

    def conformer_count(self, line: InputLine) -> int:
        if self.num_confs is not None:
            return self.num_confs
        if line.n_conformers:
            return max(1, math.ceil(self.ratio * line.n_conformers))
        return DEFAULT_NUM_CONFS
