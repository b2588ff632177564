"""Settings of one generation run, shared by ``conformer generate`` and ``conformer.generate``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conformer.diffusion.guidance import GuidanceSettings
from conformer.errors import UserInputError
from conformer.generation.inputs import InputLine

METHODS = ("model", "etkdg", "etkdg-mmff")
DEFAULT_NUM_CONFS = 10  # when neither --num-confs nor an n_conformers column gives a count


@dataclass
class GenerateOptions:
    """Settings of ``conformer generate`` (see the CLI help for each)."""

    method: str = "model"
    ckpt: str | None = None
    num_confs: int | None = None
    ratio: float = 2.0
    steps: int | None = None
    batch_size: int = 64
    device: str = "auto"  # CUDA when torch sees a GPU, else the CPU
    seed: int = 0
    hydrogens: bool = True
    workers: int = 1
    max_atoms: int = 400
    max_resamples: int = 3
    # model method: steer sampling towards the input's tetrahedral and E/Z stereo (see
    # conformer/diffusion/guidance.py); off gives the raw model's samples
    stereo_guidance: bool = True
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
    # drop conformers with bonds outside [0.6, 1.5] x the covalent radii sum (see
    # conformer/generation/domain.py); off only to inspect a model's raw output
    bond_check: bool = True
    # heavy-atom-only models: minimise the RDKit-placed hydrogens with MMFF94, heavy atoms
    # fixed (see conformer/generation/hydrogens.py); no effect on other models
    relax_hydrogens: bool = False
    energies: str | None = None  # "mmff": MMFF94 energy per conformer, sorted by it
    prune_rms: float | None = None  # Angstrom, heavy atoms (see conformer/generation/output.py)
    progress: bool | None = None  # None: a bar only on a terminal

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
        if self.steps is not None and self.steps < 1:
            raise UserInputError(f"--steps {self.steps}: must be at least 1")

    def conformer_count(self, line: InputLine) -> int:
        if self.num_confs is not None:
            return self.num_confs
        if line.n_conformers:
            return max(1, math.ceil(self.ratio * line.n_conformers))
        return DEFAULT_NUM_CONFS
