"""Settings of ``conformer reproduce drugs``: the presets, the command's options, the plan
that every stage reads, and the fingerprint that guards a resumed output folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from conformer.errors import UserInputError
from conformer.experiments.common import ExperimentSettings, atomic_json, option
from conformer.recm import MODES
from conformer.versions import file_sha256, stable_hash

REPO_ROOT = Path(__file__).resolve().parents[3]
TRAIN_SMILES = REPO_ROOT / "data" / "train_smiles" / "train_druglike.smi"
TEST_CSV = REPO_ROOT / "data" / "geom" / "drugs" / "test_smiles_corrected.csv"
GEOM_SPLIT = REPO_ROOT / "data" / "geom" / "drugs" / "split0.npy"
RDKIT_METHODS = ("etkdg", "etkdg-mmff")
METHOD_LABELS = {"etkdg": "RDKit ETKDG", "etkdg-mmff": "RDKit ETKDG + MMFF"}
# elements of the training SMILES (data/train_smiles/README.md): test molecules outside them
# would test extrapolation to unseen elements, not conformer generation
TRAIN_ELEMENTS = frozenset({"H", "C", "N", "O", "F", "S", "Cl", "Br", "P", "I"})
METRIC_KEYS = ("cov_r_mean", "cov_r_median", "mat_r_mean", "mat_r_median",
               "cov_p_mean", "cov_p_median", "mat_p_mean", "mat_p_median")


@dataclasses.dataclass(frozen=True)
class DrugsPreset:
    """Data, training and evaluation settings of one ``reproduce drugs`` preset.

    data: ``self-built`` (build-geom folders from SMILES) or ``geom`` (a real rdkit_folder).
    train_config: training YAML relative to the repository root; ``{mode}`` is replaced by the
    mode (the paper rows have one file per mode). steps: optimiser steps per run (None: the
    YAML's). Self-built data: ``train_molecules`` sampled (seed ``data_seed``) from the training
    SMILES, ``train_confs`` ETKDG embeddings each; ``test_molecules`` sampled from the GEOM test
    rows with at most ``test_max_heavy_atoms`` heavy atoms and ``test_max_rotatable_bonds``
    rotatable bonds, ``test_confs`` embeddings each, and K = min(n_conformers, built,
    ``max_references``) references (lowest MMFF energy first). sample_steps: sampler steps (None:
    the model's). validity_confs: generated conformers per molecule checked for validity.
    seeds: default number of seeds (--seeds overrides).
    """

    name: str
    data: str
    train_config: str
    steps: int | None = None
    train_molecules: int = 0
    train_confs: int = 30
    train_split: tuple[float, float, float] = (0.9, 0.1, 0.0)
    test_molecules: int = 0
    test_max_heavy_atoms: int = 24
    test_max_rotatable_bonds: int = 6
    test_confs: int = 30
    max_references: int | None = None
    data_seed: int = 1
    ratio: float = 2.0
    sample_steps: int | None = None
    batch_size: int = 64
    threshold: float = 0.75
    validity_confs: int = 2
    seeds: int = 1
    train_overrides: tuple[str, ...] = ()


PRESETS = {
    "micro": DrugsPreset(
        name="micro", data="self-built", train_config="configs/reproduce/drugs_tiny.yaml",
        steps=6, train_molecules=24, train_confs=4, test_molecules=4, test_max_heavy_atoms=14,
        test_max_rotatable_bonds=3, test_confs=6, max_references=3, sample_steps=3,
        validity_confs=1, train_split=(0.75, 0.25, 0.0),
        train_overrides=("trainer.val_check_interval=3", "trainer.checkpoint_every_n_steps=3",
                         "optim.warmup_steps=2", "data.max_atoms_per_batch=300")),
    "tiny": DrugsPreset(
        name="tiny", data="self-built", train_config="configs/reproduce/drugs_tiny.yaml",
        steps=2000, train_molecules=240, train_confs=30, test_molecules=24, test_confs=30,
        max_references=8, sample_steps=None, seeds=2),
    "small": DrugsPreset(
        name="small", data="self-built", train_config="configs/reproduce/drugs_small.yaml",
        steps=20000, train_molecules=4921, train_confs=60, test_molecules=100,
        test_max_heavy_atoms=40, test_max_rotatable_bonds=10, test_confs=100,
        max_references=30, sample_steps=20, validity_confs=4, seeds=3),
    "paper": DrugsPreset(
        name="paper", data="geom", train_config="configs/experiment/drugs_{mode}.yaml",
        steps=None, sample_steps=None, validity_confs=4),
}


@dataclasses.dataclass
class DrugsSettings(ExperimentSettings):
    """The options of ``conformer reproduce drugs`` (defaults and help come from here)."""

    preset: str = option("tiny", help="size preset: " + ", ".join(PRESETS) + " (micro: a smoke "
                         "run; paper: GEOM-Drugs, needs --geom-dir)")
    modes: str = option(",".join(MODES), help="comma-separated modes to compare; the RDKit "
                        "rows etkdg and etkdg-mmff are added unless --no-baselines")
    steps: int | None = option(None, help="optimiser steps per run", default_text=(
        "the preset's: " + ", ".join(f"{n} {p.steps or 'its training YAML'}"
                                     for n, p in PRESETS.items())))
    seeds: int | None = option(None, help="number of seeds per method", default_text=(
        "the preset's: " + ", ".join(f"{n} {p.seeds}" for n, p in PRESETS.items())))
    workers: int = option(1, help="runs trained in parallel processes; the data is also built "
                          "and prepared with this many processes")
    geom_dir: str | None = option(None, help="--preset paper: the GEOM-Drugs rdkit_folder "
                                  "(holds summary_drugs.json and drugs/); other presets build "
                                  "their own data")
    baselines: bool = option(True, flag="--no-baselines",
                             help="skip the RDKit ETKDG and ETKDG+MMFF rows")


# -- settings and layout -------------------------------------------------------------------
@dataclasses.dataclass
class Plan:
    """Everything a job needs (plain data: it crosses to worker processes)."""

    out: str
    preset: DrugsPreset
    steps: int | None
    threads: int
    geom_dir: str | None
    references: str = ""            # references.sdf (self-built) or the GEOM folder (geom)
    test_csv: str = ""              # the generation input (name, smiles, n_conformers)
    geom_test_csv: str = ""         # geom: the GEOM test CSV the references are keyed by
    cache_dir: str = ""

    @property
    def root(self) -> Path:
        return Path(self.out)


def job_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"


def say(message: str) -> None:
    print(f"[reproduce drugs] {message}", flush=True)


def fingerprint(preset: DrugsPreset, steps: int | None, geom_dir: str | None) -> dict:
    """What the numbers depend on (not seeds, modes or workers: adding a seed reuses the rest)."""
    config_files = sorted({preset.train_config.format(mode=m) for m in MODES})
    return {
        "preset": dataclasses.asdict(preset),
        "steps": steps,
        "geom_dir": str(Path(geom_dir).resolve()) if geom_dir else None,
        "train_config_sha256": {f: file_sha256(REPO_ROOT / f) for f in config_files
                                if (REPO_ROOT / f).is_file()},
        "train_smiles_sha256": file_sha256(TRAIN_SMILES) if preset.data == "self-built" else None,
        "test_csv_sha256": file_sha256(TEST_CSV),
    }


def check_settings(root: Path, settings: dict) -> None:
    path = root / "settings.json"
    digest = stable_hash(settings)
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("settings_hash") != digest:
            old = previous.get("settings", {})
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise UserInputError(
                f"--out {root}: holds a run made with other settings (changed: "
                f"{', '.join(changed)}); choose another --out, or delete the folder to redo it")
        return
    atomic_json(path, {"settings": settings, "settings_hash": digest})
