"""``conformer reproduce drugs``: the GEOM-Drugs table (protocol.md section 5), one command.

Every mode of the same denoiser (``equivariant``, ``unconstrained``, ``scheduled``, ``ace``,
``recm``) is trained with the same data, step budget and seeds; each model generates 2K
conformers per test molecule (K = its reference count); the RDKit rows (``etkdg``,
``etkdg-mmff``) run through the same generation and evaluation code on the same molecules.

Presets:

- ``micro``: a smoke run (a few molecules, a few steps) for tests; its numbers mean nothing.
- ``tiny``: minutes on a 2-core CPU. Data is self-built (protocol.md section 6): a GEOM-layout
  folder from a seeded sample of ``data/train_smiles/train_druglike.smi`` with
  ``conformer build-geom`` (ETKDG + MMFF94), and references for a seeded sample of real
  GEOM-Drugs test molecules (``data/geom/drugs/test_smiles_corrected.csv``) built the same way,
  capped at ``max_references`` per molecule. The references are MMFF minima, not GEOM's
  CREST/GFN2-xTB ensembles: the numbers are not comparable to the published ones.
- ``small``: the same on more data and steps (a GPU or a long CPU run).
- ``paper``: the GEOM-Drugs configuration: the real ``rdkit_folder`` (``--geom-dir``), the
  GeoMol split ``data/geom/drugs/split0.npy``, ``configs/experiment/drugs_<mode>.yaml`` (base
  denoiser, 250k steps), the 1000 test molecules with GEOM's own reference conformers.

Output folder (rerunning the same command resumes: every finished stage is skipped):

    settings.json                       the settings (and their hash) the folder was made with
    data/train_input.smi, train_geom/   training SMILES and their GEOM-layout folder
    data/test_input.smi, test_geom/     test SMILES and their reference builds
    data/test_molecules.csv             name, smiles (generated from), n_conformers (K)
    data/references.sdf                 the reference conformers, grouped by ``molecule``
    cache/                              prepared training records
    runs/<mode>_s<seed>/                training run (checkpoints, csv, gammas.csv/png)
    models/<mode>_s<seed>.pt            exported EMA model
    generated/<method>_s<seed>.sdf      2K conformers per test molecule (+ .summary.json)
    eval/<method>_s<seed>/              ``conformer evaluate`` output
    results.json, table.md, gamma.png   the table of every method and the recm gamma curves
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from conformer.errors import UserInputError
from conformer.recm import MODES
from conformer.versions import environment_info, file_sha256, stable_hash

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
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


def _job_name(method: str, seed: int) -> str:
    return f"{method}_s{seed}"


def _say(message: str) -> None:
    print(f"[reproduce drugs] {message}", flush=True)


def _atomic_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(path)  # an interrupted run never leaves a half-written file


def _settings(preset: DrugsPreset, steps: int | None, geom_dir: str | None) -> dict:
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


def _check_settings(root: Path, settings: dict) -> None:
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
    _atomic_json(path, {"settings": settings, "settings_hash": digest})


# -- data: self-built --------------------------------------------------------------------------
def select_train_smiles(preset: DrugsPreset) -> list[tuple[str, str]]:
    """(SMILES, name) of ``preset.train_molecules`` lines of the training list, drawn with
    ``preset.data_seed`` (the file is grouped by source, so its head is not representative)."""
    if not TRAIN_SMILES.is_file():
        raise UserInputError(f"training SMILES {TRAIN_SMILES}: not found (a source checkout "
                             "holds it; see data/train_smiles/README.md)")
    lines = []
    with open(TRAIN_SMILES) as handle:
        for number, raw in enumerate(handle, start=1):
            parts = raw.split()
            if parts and not parts[0].startswith("#"):
                lines.append((parts[0], f"train_line{number}"))
    count = min(preset.train_molecules, len(lines))
    picked = np.random.default_rng(preset.data_seed).choice(len(lines), count, replace=False)
    return [lines[i] for i in sorted(picked)]


def select_test_rows(preset: DrugsPreset) -> list[dict]:
    """GEOM-Drugs test rows for a self-built run: the rows whose ``corrected_smiles`` parses as
    one fragment of training elements within the size limits, then a seeded sample of them.
    Each: {"line", "smiles" (GEOM key), "corrected_smiles", "n_conformers"}."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdMolDescriptors

    RDLogger.DisableLog("rdApp.*")
    candidates = []
    with open(TEST_CSV, newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            smiles = (row.get("corrected_smiles") or row["smiles"]).strip()
            mol = Chem.MolFromSmiles(smiles) if "." not in smiles else None
            if mol is None or int(row["n_conformers"]) < 1:
                continue
            if mol.GetNumHeavyAtoms() > preset.test_max_heavy_atoms or \
                    rdMolDescriptors.CalcNumRotatableBonds(mol) > preset.test_max_rotatable_bonds:
                continue
            if any(a.GetSymbol() not in TRAIN_ELEMENTS for a in mol.GetAtoms()):
                continue
            candidates.append({"line": line, "smiles": row["smiles"], "corrected_smiles": smiles,
                               "n_conformers": int(row["n_conformers"])})
    count = min(preset.test_molecules, len(candidates))
    picked = np.random.default_rng(preset.data_seed).choice(len(candidates), count, replace=False)
    return [candidates[i] for i in sorted(picked)]


def _write_smi(path: Path, entries: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{smiles} {name}\n" for smiles, name in entries))


def _build(smi: Path, folder: Path, confs: int, seed: int, split, workers: int, what: str):
    from conformer.data.build import BuildSettings, build_geom_folder

    marker = folder / "reproduce_done.json"
    if marker.exists():
        _say(f"{what}: already built ({folder})")
        return json.loads(marker.read_text())
    _say(f"{what}: build-geom ({confs} ETKDG embeddings per molecule, MMFF94) -> {folder}")
    started = time.perf_counter()
    report = build_geom_folder(smi, folder, BuildSettings(n_confs=confs, seed=seed),
                               workers=workers, split_fractions=split)
    done = dataclasses.asdict(report) | {"seconds": round(time.perf_counter() - started, 1)}
    _atomic_json(marker, done)
    _say(f"{what}: built {report.built}, failed {report.failed} "
         f"(listed in {folder / 'failures.csv'}), {done['seconds']} s")
    return done


def prepare_self_built(plan: Plan, workers: int) -> dict:
    """Training folder, test references and prepared records; returns data facts for results."""
    from rdkit import Chem

    from conformer.data.build import MoleculeBuildError, canonical_key
    from conformer.data.geom import pickle_relpath, read_molecule_pickle
    from conformer.evaluate.evaluator import canonical

    preset, data = plan.preset, plan.root / "data"
    train = select_train_smiles(preset)
    _write_smi(data / "train_input.smi", train)
    train_report = _build(data / "train_input.smi", data / "train_geom", preset.train_confs,
                          preset.data_seed, preset.train_split, workers, "stage 1/4 training data")

    rows = select_test_rows(preset)
    _write_smi(data / "test_input.smi",
               [(r["corrected_smiles"], f"geom_test_line{r['line']}") for r in rows])
    test_report = _build(data / "test_input.smi", data / "test_geom", preset.test_confs,
                         preset.data_seed, (1.0, 0.0, 0.0), workers, "stage 2/4 test references")

    molecules, dropped = [], []
    references_path = data / "references.sdf"
    if not (data / "test_molecules.csv").exists() or not references_path.exists():
        writer = Chem.SDWriter(str(references_path.with_suffix(".sdf.tmp")))
        for row in rows:
            name = f"geom_test_line{row['line']}"
            try:
                key = canonical_key(row["corrected_smiles"], preset.data_seed)
            except MoleculeBuildError as error:
                dropped.append({"name": name, "reason": str(error)})
                continue
            pickle = data / "test_geom" / pickle_relpath(key, "drugs")
            if not pickle.exists():
                dropped.append({"name": name, "reason": "build-geom failed (see "
                                "test_geom/failures.csv)"})
                continue
            record = read_molecule_pickle(pickle)
            target = canonical(key, isomeric=False)
            conformers = sorted((c for c in record["conformers"]
                                 if canonical(c["rd_mol"], isomeric=False) == target),
                                key=lambda c: -c["boltzmannweight"])
            k = min(row["n_conformers"], len(conformers), preset.max_references or 10**9)
            if k == 0:
                dropped.append({"name": name, "reason": "no conformer kept its graph"})
                continue
            for conformer in conformers[:k]:
                mol = Chem.Mol(conformer["rd_mol"])
                mol.SetProp("molecule", name)
                mol.SetProp("smiles", key)
                mol.SetProp("geom_id", str(conformer["geom_id"]))
                mol.SetProp("boltzmannweight", f"{conformer['boltzmannweight']:.6g}")
                writer.write(mol)
            molecules.append({"name": name, "smiles": key, "n_conformers": k,
                              "geom_key": row["smiles"], "csv_line": row["line"],
                              "geom_n_conformers": row["n_conformers"]})
        writer.close()
        references_path.with_suffix(".sdf.tmp").replace(references_path)
        _write_test_csv(data / "test_molecules.csv", molecules)
        _atomic_json(data / "test_dropped.json", dropped)
    molecules = _read_test_csv(data / "test_molecules.csv")
    dropped = json.loads((data / "test_dropped.json").read_text())
    _say(f"test set: {len(molecules)} GEOM-Drugs test molecules with references "
         f"({sum(m['n_conformers'] for m in molecules)} reference conformers), "
         f"{len(dropped)} dropped")
    plan.references = str(references_path)
    plan.test_csv = str(data / "test_molecules.csv")
    split = data / "train_geom" / "split.npy"
    records = _prepare(plan, data / "train_geom", split, workers)
    return {"train_build": train_report, "test_build": test_report, "test_molecules": molecules,
            "test_dropped": dropped, "prepared": records}


def _write_test_csv(path: Path, molecules: list[dict]) -> None:
    fields = ["name", "smiles", "n_conformers", "geom_key", "csv_line", "geom_n_conformers"]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(molecules)
    tmp.replace(path)


def _read_test_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["n_conformers"] = int(row["n_conformers"])
    return rows


def _prepare(plan: Plan, geom_dir: Path, split: Path, workers: int) -> dict:
    from conformer.data.prepare import PrepareSettings, prepare

    cache = plan.root / "cache"
    _say(f"stage 3/4 prepare: {geom_dir} -> {cache}")
    report = prepare(geom_dir, split, cache, PrepareSettings(dataset="drugs"), workers=workers)
    manifest = json.loads((report.out_dir / "manifest.json").read_text())
    plan.cache_dir = str(cache)
    return {"out_dir": str(report.out_dir),
            **{k: v for k, v in manifest.items() if k not in ("environment", "settings")}}


# -- data: the real GEOM folder ---------------------------------------------------------------
def prepare_geom(plan: Plan, workers: int) -> dict:
    """Paper preset: prepare the real rdkit_folder; test set = the 1000 GEOM test molecules."""
    from conformer.data.splits import load_test_smiles

    geom_dir = Path(plan.geom_dir)
    data = plan.root / "data"
    molecules = [{"name": m.smiles, "smiles": m.corrected_smiles or m.smiles,
                  "n_conformers": m.n_conformers} for m in load_test_smiles(TEST_CSV)]
    data.mkdir(parents=True, exist_ok=True)
    _write_test_csv(data / "test_molecules.csv", molecules)
    plan.test_csv = str(data / "test_molecules.csv")
    plan.references = str(geom_dir)
    plan.geom_test_csv = str(TEST_CSV)
    records = _prepare(plan, geom_dir, GEOM_SPLIT, workers)
    return {"test_molecules": molecules, "test_dropped": [], "prepared": records}


def _require_geom_dir(geom_dir: str | None) -> None:
    hint = ("the paper preset needs the GEOM-Drugs rdkit_folder (rdkit_folder.tar.gz from "
            "Harvard Dataverse, doi 10.7910/DVN/JNGTDF, unpacked): pass --geom-dir FOLDER "
            "holding summary_drugs.json and drugs/")
    if not geom_dir:
        raise UserInputError(f"--geom-dir: not given; {hint}")
    folder = Path(geom_dir)
    if not (folder / "summary_drugs.json").is_file() or not (folder / "drugs").is_dir():
        raise UserInputError(f"--geom-dir {folder}: no summary_drugs.json and drugs/ there; "
                             f"{hint}")


# -- jobs (run in worker processes) -----------------------------------------------------------
def _quiet_lightning() -> None:
    """Keep a worker's output to the stage lines: Lightning sets its loggers' levels when it is
    imported, so import it first."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")


def train_config(plan: Plan, mode: str, seed: int):
    """The ``ExperimentConfig`` of one (mode, seed) run."""
    from conformer.config import load_config

    path = REPO_ROOT / plan.preset.train_config.format(mode=mode)
    if not path.is_file():
        raise UserInputError(f"training config {path}: not found (the presets read "
                             "configs/ of a source checkout)")
    overrides = [*plan.preset.train_overrides, f"name={_job_name(mode, seed)}", f"seed={seed}",
                 f"model.mode={mode}", f"data.cache_dir={plan.cache_dir}",
                 f"logging.run_dir={plan.root / 'runs'}"]
    if plan.steps is not None:
        overrides.append(f"trainer.max_steps={plan.steps}")
    return load_config(path, overrides)


def _read_losses(run_dir: Path) -> dict:
    """Train and validation loss from the CSV logs (every start's version folder; later rows
    win per step)."""
    train, val = {}, {}
    for metrics in sorted((run_dir / "csv").glob("version_*/metrics.csv"),
                          key=lambda p: int(p.parent.name.split("_")[1])):
        with open(metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                step = int(row.get("step") or 0)
                if row.get("train/loss"):
                    train[step] = float(row["train/loss"])
                if row.get("val/loss"):
                    val[step] = float(row["val/loss"])
    steps = sorted(train)
    tail = [train[s] for s in steps[-max(1, len(steps) // 10):]]
    return {
        "train_loss_final": float(np.mean(tail)) if tail else None,
        "train_loss_final_note": "mean of the last 10% of logged steps (per-batch losses)",
        "val_loss_final": val[max(val)] if val else None,
        "train_loss_curve": [[s, round(train[s], 5)] for s in steps],
        "val_loss_curve": [[s, round(v, 5)] for s, v in sorted(val.items())],
    }


def _train_stage(plan: Plan, mode: str, seed: int) -> dict:
    from conformer.train.export import export_checkpoint, load_model
    from conformer.train.run import build_network, train

    config = train_config(plan, mode, seed)
    run_dir = config.run_path
    marker = run_dir / "reproduce_train.json"
    model_path = plan.root / "models" / f"{_job_name(mode, seed)}.pt"
    if marker.exists() and model_path.exists():
        return json.loads(marker.read_text())
    resumed = (run_dir / "checkpoints" / "last.ckpt").exists()
    started = time.perf_counter()
    result = train(config, resume=resumed)
    seconds = time.perf_counter() - started
    meta = export_checkpoint(result["last_checkpoint"], model_path)
    net, diffusion, _ = load_model(model_path)
    trained = build_network(config)
    info = {
        "global_step": int(result["global_step"]), "train_seconds": round(seconds, 1),
        "resumed": resumed,  # train_seconds then counts only the part after the resume
        "params_trained": sum(p.numel() for p in trained.parameters()),
        "params_exported": sum(p.numel() for p in net.parameters()),
        "sample_steps_model": diffusion.settings.sample_steps,
        "model_file": str(model_path),
        "export_gammas": meta.get("gammas", []),
    }
    gammas = run_dir / "gammas.csv"
    if gammas.exists():
        from conformer.train.callbacks import read_gamma_history

        steps, series = read_gamma_history(gammas)
        info["gamma_final"] = [s[-1] for s in series] if steps else []
        every = max(1, len(steps) // 100)
        info["gamma_curve_steps"] = steps[::every]
        info["gamma_curve"] = [[round(s[i], 5) for s in series] for i in range(0, len(steps),
                                                                             every)]
    states = getattr(getattr(net, "recm", None), "states", None)
    if states is not None:
        info["dropped"] = [bool(getattr(s, "dropped", False)) for s in states]
    info.update(_read_losses(run_dir))
    _atomic_json(marker, info)
    return info


def _generate_stage(plan: Plan, method: str, seed: int, model_path: str | None) -> dict:
    """``conformer generate`` for one row: the model file of a trained mode, or an RDKit
    method; written to ``generated/<method>_s<seed>.sdf`` (generate resumes by itself)."""
    from conformer.generation import GenerateOptions, generate_file

    out = plan.root / "generated" / f"{_job_name(method, seed)}.sdf"
    marker = out.with_suffix(".summary.json")
    if marker.exists() and out.exists():
        return json.loads(marker.read_text())
    model = model_path is not None
    options = GenerateOptions(method="model" if model else method, ckpt=model_path,
                              ratio=plan.preset.ratio,
                              steps=plan.preset.sample_steps if model else None,
                              batch_size=plan.preset.batch_size, seed=seed,
                              workers=plan.threads if model else 1, progress=False)
    summary = generate_file(plan.test_csv, out, options).as_dict()
    summary["options"] = {k: v for k, v in dataclasses.asdict(options).items()
                          if k != "progress"}
    _atomic_json(marker, summary)
    return summary


def _load_references(plan: Plan) -> dict:
    from conformer.evaluate.evaluator import load_references

    if plan.geom_test_csv:
        return load_references(Path(plan.references), test_csv=Path(plan.geom_test_csv))
    return load_references(Path(plan.references), ref_key="molecule")


def _evaluate_stage(plan: Plan, method: str, seed: int) -> dict:
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate

    generated = plan.root / "generated" / f"{_job_name(method, seed)}.sdf"
    out = plan.root / "eval" / _job_name(method, seed)
    results = out / "results.json"
    if results.exists():
        document = json.loads(results.read_text())
        if document["settings"].get("generated_sha256") == file_sha256(generated):
            return document
    out.mkdir(parents=True, exist_ok=True)
    settings = EvaluationSettings(threshold=plan.preset.threshold,
                                  validity_confs_per_molecule=plan.preset.validity_confs)
    return evaluate(generated, _load_references(plan), out, settings, workers=1, progress=False,
                    extra_settings={"references": plan.references})


def run_job(plan: Plan, method: str, seed: int) -> dict:
    """Train (model modes), generate and evaluate one (method, seed); returns its entry."""
    import torch

    torch.set_num_threads(max(1, plan.threads))
    _quiet_lightning()
    started = time.perf_counter()
    entry: dict = {"method": method, "seed": seed,
                   "kind": "rdkit" if method in RDKIT_METHODS else "model"}
    model_path = None
    if entry["kind"] == "model":
        entry["training"] = _train_stage(plan, method, seed)
        model_path = entry["training"]["model_file"]
    entry["generation"] = _generate_stage(plan, method, seed, model_path)
    document = _evaluate_stage(plan, method, seed)
    entry["metrics"] = document["metrics"]
    entry["per_molecule"] = document["per_molecule"]
    entry["n_failures"] = document["n_failures"]
    entry["failures"] = document["failures"]
    entry["validity"] = {k: v for k, v in document["validity"].items() if k != "settings"}
    entry["seconds"] = round(time.perf_counter() - started, 1)
    return entry


# -- table and plot -----------------------------------------------------------------------------
def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt_params(count: float | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def write_table(document: dict, path: Path) -> None:
    """protocol.md section 5 layout, one row per method (mean over seeds), plus context."""
    runs, settings = document["runs"], document["settings"]
    preset = settings["preset"]
    methods = [m for m in (*MODES, *RDKIT_METHODS) if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    data = document["data"]
    n_test = len(data["test_molecules"])
    n_refs = sum(int(m["n_conformers"]) for m in data["test_molecules"])
    if preset["data"] == "self-built":
        header = [
            f"# GEOM-Drugs protocol, preset `{preset['name']}`: self-built references, "
            "NOT GEOM-Drugs",
            "",
            f"Test set: {n_test} real GEOM-Drugs test molecules (seeded sample of "
            f"`data/geom/drugs/test_smiles_corrected.csv` rows with <= "
            f"{preset['test_max_heavy_atoms']} heavy atoms and <= "
            f"{preset['test_max_rotatable_bonds']} rotatable bonds), but their {n_refs} reference "
            "conformers were built here with `conformer build-geom` (ETKDGv3 + MMFF94 minima, "
            f"6 kcal/mol window, 0.5 A de-duplication; at most {preset['max_references']} per "
            "molecule, lowest energy first), not GEOM's CREST/GFN2-xTB ensembles. "
            "**The numbers are not comparable to the published GEOM-Drugs table.** "
            "The references are made by ETKDG + MMFF94, so the `RDKit ETKDG + MMFF` row "
            "re-runs the reference procedure with other seeds: a ceiling for this reference "
            "set, not a fair baseline.",
            "",
            f"Training: {data['prepared'].get('split_sizes', {}).get('train', '?')} molecules "
            f"(seeded sample of `data/train_smiles/train_druglike.smi`, build-geom with "
            f"{preset['train_confs']} embeddings, none in the GEOM test or Hutchison sets), "
            f"{settings['steps_resolved']} optimiser steps per mode, denoiser preset "
            f"`{settings['denoiser_preset']}`, same data, budget and seeds for every mode.",
        ]
    else:
        header = [
            "# GEOM-Drugs (rdkit_folder, GeoMol split), 1000 test molecules",
            "",
            f"Training: {settings['steps_resolved']} optimiser steps per mode, denoiser preset "
            f"`{settings['denoiser_preset']}`.",
        ]
    guidance = sorted({str(r["generation"].get("options", {}).get("stereo_guidance", "?"))
                       for r in runs if r["kind"] == "model"})
    header += [
        "",
        "Model rows: `conformer generate` defaults (stereo guidance in the sampler: "
        f"{'/'.join(guidance) or '-'}); 'stereo correct before correction' is measured on the "
        "sampler's output, before the per-conformer reflection/resampling fix.",
        "",
        f"2K conformers per molecule (K = reference count), delta = {preset['threshold']} A "
        f"(strict <); mean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) of the "
        "per-seed mean/median over molecules. params: parameters of the exported model "
        "(dropped RECM branches removed); steps: network evaluations per conformer "
        + (f"({settings['sample_steps_resolved']} Heun steps = "
           f"{2 * int(settings['sample_steps_resolved']) - 1} evaluations, plus the "
           "sampler's refinement steps)." if "evaluations_resolved" in settings else
           "(Heun, 2 x steps - 1 network evaluations)."),
        "",
        "| method | params | steps | COV-R mean/med % | MAT-R mean/med A | COV-P mean/med % "
        "| MAT-P mean/med A |",
        "|---|---|---|---|---|---|---|",
    ]
    extra = ["", "| method | molecules evaluated | empty (COV 0) | failures listed | "
             "stereo correct before / after correction % | bonds within 0.1 A of MMFF % | "
             "train loss (end) | val loss (end) | final gamma per layer | free branches "
             "dropped at export |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def ang(x):
        return "-" if x is None else f"{x:.3f}"

    def num(x):
        return "-" if x is None else f"{x:.4g}"

    for method in methods:
        rows = [r for r in runs if r["method"] == method]
        m = {k: _mean([r["metrics"][k] for r in rows]) for k in METRIC_KEYS}
        label = METHOD_LABELS.get(method, method)
        if rows[0]["kind"] == "model":
            params = _fmt_params(_mean([r["training"]["params_exported"] for r in rows]))
            steps = str(settings.get("evaluations_resolved", settings["sample_steps_resolved"]))
        else:
            params, steps = "-", "-"
        cells = [f"{pct(m['cov_r_mean'])} / {pct(m['cov_r_median'])}",
                 f"{ang(m['mat_r_mean'])} / {ang(m['mat_r_median'])}",
                 f"{pct(m['cov_p_mean'])} / {pct(m['cov_p_median'])}",
                 f"{ang(m['mat_p_mean'])} / {ang(m['mat_p_median'])}"]
        header.append(f"| {label} | {params} | {steps} | " + " | ".join(cells) + " |")
        training = [r.get("training", {}) for r in rows]
        gammas = [t.get("gamma_final") for t in training if t.get("gamma_final")]
        gamma = "-" if not gammas or method == "equivariant" else ", ".join(
            f"{g:.3f}" for g in np.mean(np.array(gammas), axis=0))
        flags = [t["dropped"] for t in training if t.get("dropped") is not None]
        dropped_text = "-" if not flags or method == "equivariant" else " / ".join(
            f"{sum(f)}/{len(f)}" for f in flags)
        extra.append(
            f"| {label} | {_mean([r['metrics']['n_molecules'] for r in rows]):g} | "
            f"{_mean([r['metrics']['n_empty_generation'] for r in rows]):g} | "
            f"{_mean([r['n_failures'] for r in rows]):g} | "
            f"{pct(_mean([r['generation'].get('stereo_correct_before') for r in rows]))} / "
            f"{pct(_mean([r['generation'].get('stereo_correct_after') for r in rows]))} | "
            f"{pct(_mean([r['validity'].get('bonds_ok_fraction_mean') for r in rows]))} | "
            f"{num(_mean([t.get('train_loss_final') for t in training]))} | "
            f"{num(_mean([t.get('val_loss_final') for t in training]))} | {gamma} | "
            f"{dropped_text} |")
    dropped = data.get("test_dropped", [])
    footer = ["", f"Test molecules dropped before evaluation (no reference built): {len(dropped)}"
              + (" (" + "; ".join(f"{d['name']}: {d['reason']}" for d in dropped) + ")"
                 if dropped else ""),
              "Final gamma: the training state at the last step, mean over seeds; a dropped "
              "branch is removed at export whatever its gamma (ACE truncates at the end, RECM "
              "absorbs zero, scheduled drops its branch), so those models run equivariant. "
              "Dropped counts are per seed.",
              "Per-molecule numbers, failures, loss curves and settings: results.json."]
    path.write_text("\n".join(header + extra + footer) + "\n")


def plot_gamma(document: dict, path: Path) -> bool:
    """The recm run's per-layer gamma over training (first seed), as training drew it."""
    from conformer.train.callbacks import plot_gammas

    runs = sorted((r for r in document["runs"] if r["method"] == "recm"), key=lambda r: r["seed"])
    for run in runs:
        csv_path = Path(document["out"]) / "runs" / _job_name("recm", run["seed"]) / "gammas.csv"
        if csv_path.exists():
            plot_gammas(csv_path, path)
            return True
    return False


# -- entry point ---------------------------------------------------------------------------------
def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in (*MODES, *RDKIT_METHODS)]
    if unknown or not modes:
        raise UserInputError(f"--modes {text!r}: choose from {', '.join((*MODES, *RDKIT_METHODS))}")
    return modes


def run(args) -> int:
    """``conformer reproduce drugs``: data, training, generation, evaluation, table; resumable."""
    if args.preset not in PRESETS:
        raise UserInputError(f"--preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    seeds = preset.seeds if getattr(args, "seeds", None) is None else args.seeds
    if seeds < 1:
        raise UserInputError(f"--seeds {seeds}: need at least 1")
    if args.workers < 1:
        raise UserInputError(f"--workers {args.workers}: need at least 1")
    steps = args.steps if args.steps is not None else preset.steps
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps {steps}: need at least 1")
    methods = _parse_modes(args.modes)
    if getattr(args, "baselines", True):
        methods += [m for m in RDKIT_METHODS if m not in methods]
    geom_dir = getattr(args, "geom_dir", None)
    if preset.data == "geom":
        _require_geom_dir(geom_dir)
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    settings = _settings(preset, steps, geom_dir)
    _check_settings(root, settings)
    plan = Plan(out=str(root), preset=preset, steps=steps, threads=max(1, args.threads),
                geom_dir=geom_dir)
    started = time.perf_counter()
    if preset.data == "self-built":
        data = prepare_self_built(plan, args.workers)
    else:
        data = prepare_geom(plan, args.workers)

    probe = train_config(plan, "recm", 0)
    resolved = settings | {"steps_resolved": probe.trainer.max_steps,
                           "denoiser_preset": probe.model.preset,
                           "sample_steps_resolved": preset.sample_steps
                           or probe.diffusion.sample_steps,
                           # network evaluations per conformer (ODE + refinement): the table's
                           # "steps" column, comparable with the published rows
                           "evaluations_resolved": _evaluations(probe, preset),
                           "seeds": list(range(seeds)), "methods": methods}
    jobs = [(m, s) for s in range(seeds) for m in methods]
    _say(f"stage 4/4: {len(jobs)} runs (train, generate 2K, evaluate) for "
         f"{', '.join(methods)} x {seeds} seed(s), {args.workers} worker(s)")
    from tqdm import tqdm

    entries = []
    progress = tqdm(total=len(jobs), desc="drugs runs", unit="run")

    def done(entry: dict) -> None:
        entries.append(entry)
        m = entry["metrics"]
        cov = "-" if m["cov_r_mean"] is None else f"{100 * m['cov_r_mean']:.1f}%"
        mat = "-" if m["mat_r_mean"] is None else f"{m['mat_r_mean']:.3f}"
        _say(f"{_job_name(entry['method'], entry['seed'])}: COV-R mean {cov}, "
             f"MAT-R mean {mat} A, {entry['seconds']} s")
        progress.update()

    try:
        if args.workers <= 1:
            for method, seed in jobs:
                done(run_job(plan, method, seed))
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
                futures = [pool.submit(run_job, plan, m, s) for m, s in jobs]
                for future in as_completed(futures):
                    done(future.result())
    finally:
        progress.close()
    order = {m: i for i, m in enumerate((*MODES, *RDKIT_METHODS))}
    entries.sort(key=lambda e: (order[e["method"]], e["seed"]))
    document = {"settings": resolved, "settings_hash": stable_hash(settings),
                "environment": environment_info(), "out": str(root),
                "data": data, "runs": entries,
                "wall_seconds_this_invocation": round(time.perf_counter() - started, 1)}
    _atomic_json(root / "results.json", document)
    write_table(document, root / "table.md")
    if not plot_gamma(document, root / "gamma.png") and (root / "gamma.png").exists():
        (root / "gamma.png").unlink()
    print((root / "table.md").read_text())
    _say(f"wrote {root / 'results.json'}, {root / 'table.md'}"
         + (f", {root / 'gamma.png'}" if (root / "gamma.png").exists() else "")
         + f" in {time.perf_counter() - started:.0f} s")
    return 0




def _evaluations(config, preset: DrugsPreset) -> int:
    """Network evaluations per generated conformer under the preset's sampler settings."""
    from conformer.diffusion import EDMDiffusion

    return EDMDiffusion(config.diffusion).num_evaluations(
        preset.sample_steps or config.diffusion.sample_steps)


__all__ = ["PRESETS", "DrugsPreset", "run", "run_job", "select_test_rows", "select_train_smiles",
           "write_table"]
