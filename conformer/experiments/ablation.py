"""Recipe ablations: each arm trained to the same CPU-time budget, scored on validation
molecules of our own build (never Hutchison or GEOM test molecules).

An arm is a training config plus dotted overrides (``conformer.config.load_config``) and,
optionally, sampler settings applied when its checkpoint is exported. Per arm, under ``out``:

    runs/<arm>/               the training run (``trainer.max_cpu_seconds`` = the budget;
                              an interrupted run resumes from its last.ckpt)
    models/<arm>.pt           the exported EMA model
    generated/<arm>.sdf       2K conformers per validation molecule (``conformer generate``'s
                              code path, stereo guidance on, seed 0)
    eval/<arm>/results.json   the project's evaluator: COV/MAT at ``threshold``, and bonds
                              within 0.1 A of MMFF94 (``conformer.evaluate.validity``, on
                              ``validity_confs`` conformers per molecule)
    arms/<arm>.json           the arm's row; an arm with this file is never rerun

``validation/`` holds the validation molecules (``molecules.csv``: name, smiles,
n_conformers = K) and their references (``references.sdf``: every conformer the build kept
for them, MMFF94 minimised, grouped by ``molecule``), the first ``val_molecules`` molecules of
the build's val split.

Why CPU seconds: the machine is shared, so wall time measures the neighbours; with one torch
thread per arm the CPU seconds of the training process measure the work the recipe got.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from conformer.errors import UserInputError
from conformer.experiments.common import atomic_json


@dataclass(frozen=True)
class Arm:
    """One recipe. change: what it changes, in words (the table's first column).
    sampler_of: the name of another arm whose trained model this arm samples with its own
    ``sampler_overrides`` (a sampler-only change: no training of its own)."""

    name: str
    change: str
    config: str
    overrides: tuple[str, ...] = ()
    sampler_overrides: dict = field(default_factory=dict)
    sampler_of: str | None = None


@dataclass(frozen=True)
class AblationSettings:
    """Where the data is, the budget and the scoring.

    geom_dir: the GEOM-layout build (holds split.npy); cache_dir: its ``conformer prepare``
    output; budget_cpu_minutes: training CPU time per arm; val_molecules: the first N of the
    val split; ratio: conformers generated per reference conformer (2 = 2K).
    validation_dir: another GEOM-layout build whose val split supplies the validation
    molecules (None: geom_dir's), e.g. drug-sized molecules built with
    ``scripts/select_validation_smiles.py`` and ``conformer build-geom --split-fractions
    0,1,0``; validation_name: a name for that set. With a name, the validation molecules,
    generated conformers, evaluations, rows and table of this set go to
    ``out/scored/<validation_name>/`` and the trained models (``out/runs``, ``out/models``)
    are reused: one training, scored on several sets.
    mmff: score the conformers after MMFF94 minimisation (``conformer generate``'s polish)
    instead of as drawn (the rows of ``docs/results/recipe_ablation.md`` before session 10
    are as drawn).
    """

    out: str
    geom_dir: str
    cache_dir: str
    budget_cpu_minutes: float = 20.0
    val_molecules: int = 40
    ratio: float = 2.0
    threshold: float = 0.75
    validity_confs: int = 4
    threads: int = 1
    seed: int = 0
    validation_dir: str | None = None
    validation_name: str = ""
    mmff: bool = False

    @property
    def score_dir(self) -> Path:
        """Where this validation set's molecules, samples, evaluations and rows go."""
        root = Path(self.out)
        return root / "scored" / self.validation_name if self.validation_name else root

    def __post_init__(self) -> None:
        if self.budget_cpu_minutes <= 0:
            raise UserInputError(f"budget {self.budget_cpu_minutes} CPU-minutes: must be > 0")
        if self.val_molecules < 1:
            raise UserInputError(f"val_molecules {self.val_molecules}: must be >= 1")
        if self.threads < 1:
            raise UserInputError(f"threads {self.threads}: must be >= 1")
        if self.validation_dir and not self.validation_name:
            raise UserInputError(f"validation_dir {self.validation_dir}: give it a "
                                 "validation_name, so its scores do not mix with the default "
                                 "set's")
        if self.validation_name and not self.validation_name.replace("_", "").replace(
                "-", "").isalnum():
            raise UserInputError(f"validation_name {self.validation_name!r}: use letters, "
                                 "digits, '_' and '-' only")


def read_arms(path: str | Path) -> list[Arm]:
    """The arms of a YAML file: ``arms: [{name, change, config, overrides, sampler}]``;
    ``config`` paths are relative to the repository root (the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"arms file {path}: not found")
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("arms") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserInputError(f"arms file {path}: expected a non-empty list under 'arms'")
    arms, names = [], set()
    allowed = {"name", "change", "config", "overrides", "sampler", "sampler_of"}
    for index, entry in enumerate(entries):
        where = f"arms file {path}: arm {index + 1}"
        if not isinstance(entry, dict) or not {"name", "change", "config"} <= set(entry):
            raise UserInputError(f"{where}: needs name, change and config")
        unknown = set(entry) - allowed
        if unknown:
            raise UserInputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        name = str(entry["name"])
        if name in names or not name.replace("_", "").replace("-", "").isalnum():
            raise UserInputError(f"{where}: name {name!r} is repeated or not [A-Za-z0-9_-]")
        names.add(name)
        sampler_of = entry.get("sampler_of")
        if sampler_of is not None and str(sampler_of) not in names - {name}:
            raise UserInputError(f"{where}: sampler_of {sampler_of!r} names no arm above it")
        arms.append(Arm(name, str(entry["change"]), str(entry["config"]),
                        tuple(str(o) for o in entry.get("overrides") or ()),
                        dict(entry.get("sampler") or {}),
                        None if sampler_of is None else str(sampler_of)))
    return arms


def select(arms: list[Arm], only: str | None) -> list[Arm]:
    """The arms named in the comma-separated ``only`` (None: all), in the file's order."""
    if not only:
        return arms
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(wanted) - {a.name for a in arms})
    if unknown:
        raise UserInputError(f"--only: no arm named {', '.join(unknown)} (arms: "
                             f"{', '.join(a.name for a in arms)})")
    return [a for a in arms if a.name in wanted]


# -- validation molecules ------------------------------------------------------------------------
def validation_set(settings: AblationSettings) -> tuple[Path, Path]:
    """(molecules.csv, references.sdf) of the first ``val_molecules`` of the val split of
    ``validation_dir`` (default: ``geom_dir``); written once under ``score_dir/validation``
    and reused."""
    from rdkit import Chem

    from conformer.data.geom import read_molecule_pickle, sorted_pickle_paths
    from conformer.data.splits import load_split
    from conformer.evaluate.evaluator import canonical

    folder = settings.score_dir / "validation"
    csv_path, sdf_path = folder / "molecules.csv", folder / "references.sdf"
    if csv_path.exists() and sdf_path.exists():
        return csv_path, sdf_path
    geom_dir = Path(settings.validation_dir or settings.geom_dir)
    pickles = sorted_pickle_paths(geom_dir, "drugs")
    if not pickles:
        raise UserInputError(f"geom_dir {geom_dir}: no molecule pickles under drugs/")
    _, val, _ = load_split(geom_dir / "split.npy", len(pickles))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    # arms run side by side may both get here: each writes its own temporary files and the
    # renames are atomic, so either's (identical) files win
    sdf_tmp = sdf_path.with_suffix(f".sdf.{os.getpid()}.tmp")
    csv_tmp = csv_path.with_suffix(f".csv.{os.getpid()}.tmp")
    writer = Chem.SDWriter(str(sdf_tmp))
    for index in val[: settings.val_molecules]:
        record = read_molecule_pickle(pickles[int(index)])
        smiles = record["smiles"]
        target = canonical(smiles, isomeric=False)
        conformers = sorted((c for c in record["conformers"]
                             if canonical(c["rd_mol"], isomeric=False) == target),
                            key=lambda c: -c["boltzmannweight"])
        if not conformers:
            continue
        name = f"val{int(index)}"
        for conformer in conformers:
            mol = Chem.Mol(conformer["rd_mol"])
            mol.SetProp("molecule", name)
            mol.SetProp("smiles", smiles)
            writer.write(mol)
        rows.append({"name": name, "smiles": smiles, "n_conformers": len(conformers)})
    writer.close()
    with open(csv_tmp, "w", newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=["name", "smiles", "n_conformers"])
        table.writeheader()
        table.writerows(rows)
    sdf_tmp.replace(sdf_path)
    csv_tmp.replace(csv_path)
    return csv_path, sdf_path


# -- one arm ----------------------------------------------------------------------------------
def arm_config(arm: Arm, settings: AblationSettings):
    """The arm's ``ExperimentConfig``: its config and overrides, then the harness's own keys
    (name, data, run folder, CPU budget; no wandb, no progress bar)."""
    from conformer.config import load_config

    return load_config(arm.config, [
        *arm.overrides, f"name={arm.name}", f"seed={settings.seed}",
        f"data.cache_dir={settings.cache_dir}",
        f"logging.run_dir={Path(settings.out) / 'runs'}", "logging.wandb=false",
        "logging.progress_bar=false",
        f"trainer.max_cpu_seconds={settings.budget_cpu_minutes * 60.0}"])


def validation_loss(model_path: Path, config, batches: int = 20, seed: int = 1234) -> float:
    """Mean loss of the exported (EMA) model over the first ``batches`` val batches, with a
    fixed draw per batch. Not comparable across kinds: EDM's loss is a weighted denoising
    error, flow's a velocity error."""
    import torch

    from conformer.data.datamodule import ConformerDataModule
    from conformer.model_io import load_model

    net, diffusion, _ = load_model(model_path, "cpu")
    datamodule = ConformerDataModule.from_config(config.data, seed=config.seed)
    datamodule.setup("validate")
    losses = []
    with torch.no_grad():
        for index, batch in enumerate(datamodule.val_dataloader()):
            if index >= batches:
                break
            generator = torch.Generator().manual_seed(seed + index)
            losses.append(float(diffusion.loss(net, batch, generator=generator)))
    return statistics.fmean(losses) if losses else float("nan")


def resample_arm(arm: Arm, settings: AblationSettings, arms: list[Arm]) -> dict:
    """A sampler-only arm: the trained checkpoint of ``arm.sampler_of`` exported with this
    arm's sampler; the training facts are that arm's."""
    from conformer.model_io import export_checkpoint, load_model

    source = next(a for a in arms if a.name == arm.sampler_of)
    config = arm_config(source, settings)
    marker = config.run_path / "ablation_train.json"
    if not marker.exists():
        raise UserInputError(f"arm {arm.name}: train arm {source.name} first (sampler_of)")
    training = json.loads(marker.read_text())
    model_path = Path(settings.out) / "models" / f"{arm.name}.pt"
    export_checkpoint(config.run_path / "checkpoints" / "last.ckpt", model_path,
                      arm.sampler_overrides or None)
    _, diffusion, _ = load_model(model_path)
    return training | {"model_file": str(model_path),
                       "sampling_evaluations": diffusion.num_evaluations(),
                       "trained_by_arm": source.name}


def train_arm(arm: Arm, settings: AblationSettings) -> dict:
    """Train (or resume) the arm to the budget and export its model; facts for the table."""
    import torch

    from conformer.model_io import export_checkpoint, load_model
    from conformer.train.run import train

    out = Path(settings.out)
    config = arm_config(arm, settings)
    model_path = out / "models" / f"{arm.name}.pt"
    marker = config.run_path / "ablation_train.json"
    if marker.exists() and model_path.exists():
        return json.loads(marker.read_text())
    last = config.run_path / "checkpoints" / "last.ckpt"
    wall = time.perf_counter()
    result = train(config, resume=last.exists())
    wall = time.perf_counter() - wall
    checkpoint = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    cpu_states = [v for k, v in checkpoint.get("callbacks", {}).items() if "CPUTimeLimit" in k]
    cpu_seconds = cpu_states[0]["cpu_seconds_used"] if cpu_states else None
    export_checkpoint(result["last_checkpoint"], model_path, arm.sampler_overrides or None)
    _, diffusion, meta = load_model(model_path)
    info = {
        "global_step": int(result["global_step"]),
        "max_steps": config.trainer.max_steps,
        "cpu_seconds": cpu_seconds,
        "wall_seconds_last_sitting": round(wall, 1),
        "val_loss": validation_loss(model_path, config),
        "diffusion_kind": meta["diffusion_settings"].get("kind", "edm"),
        "sampling_evaluations": diffusion.num_evaluations(),
        "model_file": str(model_path),
        "config": config.to_dict(),
    }
    atomic_json(marker, info)
    return info


def evaluate_arm(arm: Arm, settings: AblationSettings, model_path: str) -> dict:
    """Generate 2K conformers per validation molecule and score them against the references."""
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references
    from conformer.generation import GenerateOptions, generate_file

    out = settings.score_dir
    molecules, references = validation_set(settings)
    sdf = out / "generated" / f"{arm.name}.sdf"
    sdf.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # bond_check off: arms are scored on their samples as drawn (generate's default would
    # reject implausible conformers and resample them, hiding part of the difference)
    summary = generate_file(molecules, sdf, GenerateOptions(
        ckpt=model_path, ratio=settings.ratio, seed=settings.seed, device="cpu",
        workers=1, progress=False, bond_check=False, mmff=settings.mmff)).as_dict()
    generation_seconds = time.perf_counter() - started
    document = evaluate(sdf, load_references(references, ref_key="molecule"),
                        out / "eval" / arm.name,
                        EvaluationSettings(threshold=settings.threshold,
                                           validity_confs_per_molecule=settings.validity_confs),
                        workers=1, progress=False)
    return {"generation": summary, "generation_wall_seconds": round(generation_seconds, 1),
            "metrics": document["metrics"], "n_failures": document["n_failures"],
            "validity": {k: v for k, v in document["validity"].items() if k != "settings"}}


def run_arm(arm: Arm, settings: AblationSettings, arms: list[Arm] | None = None) -> dict:
    """The arm's row (trained, generated and evaluated unless ``arms/<name>.json`` exists).
    ``arms``: every arm of the file (needed by a ``sampler_of`` arm)."""
    import torch

    path = settings.score_dir / "arms" / f"{arm.name}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(settings.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    started = time.perf_counter()
    if arm.sampler_of:
        training = resample_arm(arm, settings, arms or [])
    else:
        training = train_arm(arm, settings)
    scores = evaluate_arm(arm, settings, training["model_file"])
    row = {"arm": arm.name, "change": arm.change, "config": arm.config,
           "overrides": list(arm.overrides), "sampler_overrides": arm.sampler_overrides,
           "budget_cpu_minutes": _trained_budget_minutes(training, settings),
           "settings": dataclasses.asdict(settings),
           "training": {k: v for k, v in training.items() if k != "config"},
           **scores, "harness_wall_seconds": round(time.perf_counter() - started, 1)}
    atomic_json(path, row)
    return row


def _trained_budget_minutes(training: dict, settings: AblationSettings) -> float:
    """The CPU budget the arm's model was trained under: a sampler-only arm reuses a model
    trained earlier, possibly with another ``--budget-minutes`` than this invocation's."""
    seconds = (training.get("config") or {}).get("trainer", {}).get("max_cpu_seconds")
    return settings.budget_cpu_minutes if seconds is None else float(seconds) / 60.0


# -- the table ----------------------------------------------------------------------------------
def _number(value, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def table_markdown(rows: list[dict]) -> str:
    """One line per arm: change, budget, steps, CPU and wall time, val loss, COV/MAT, bonds,
    sampling evaluations."""
    header = ("| arm | change | budget (CPU-min) | steps reached | CPU used (min) "
              "| train wall (min) | val loss "
              "| COV-R mean / median % | MAT-R mean / median A | COV-P mean % | MAT-P mean A "
              "| bonds within 0.1 A of MMFF % | sampling evaluations |")
    lines = [header, "|" + "|".join(["---"] * (header.count("|") - 1)) + "|"]
    for row in rows:
        m, t = row["metrics"], row["training"]
        wall = t.get("wall_seconds_last_sitting")
        lines.append(
            f"| {row['arm']} | {row['change']} | {row['budget_cpu_minutes']:g} "
            f"| {t['global_step']} | {_number(t.get('cpu_seconds'), 1, 1 / 60)} "
            f"| {_number(wall, 1, 1 / 60)} | {_number(t['val_loss'], 4)} "
            f"| {_number(m.get('cov_r_mean'), 1, 100)} / {_number(m.get('cov_r_median'), 1, 100)} "
            f"| {_number(m.get('mat_r_mean'), 3)} / {_number(m.get('mat_r_median'), 3)} "
            f"| {_number(m.get('cov_p_mean'), 1, 100)} | {_number(m.get('mat_p_mean'), 3)} "
            f"| {_number(row['validity'].get('bonds_ok_fraction_mean'), 1, 100)} "
            f"| {t['sampling_evaluations']} |")
    return "\n".join(lines) + "\n"


def write_table(settings: AblationSettings, arms: list[Arm]) -> Path | None:
    """``out/table.md`` from every finished arm (in ``arms``' order); None if none finished."""
    folder = settings.score_dir / "arms"
    rows = [json.loads((folder / f"{a.name}.json").read_text()) for a in arms
            if (folder / f"{a.name}.json").exists()]
    if not rows:
        return None
    path = settings.score_dir / "table.md"
    path.write_text(table_markdown(rows))
    return path


__all__ = ["AblationSettings", "Arm", "arm_config", "read_arms", "run_arm", "select",
           "table_markdown", "validation_set", "write_table"]
