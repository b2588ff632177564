"""The stages of ``conformer reproduce drugs``: data (self-built or the real GEOM folder),
then per (method, seed) training, generation and evaluation; every stage skips what a previous
run of the same folder finished."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from conformer.errors import UserInputError
from conformer.experiments.common import atomic_json
from conformer.experiments.drugs.settings import (
    GEOM_SPLIT,
    RDKIT_METHODS,
    REPO_ROOT,
    TEST_CSV,
    TRAIN_ELEMENTS,
    TRAIN_SMILES,
    DrugsPreset,
    Plan,
    job_name,
    say,
)
from conformer.versions import file_sha256


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
        say(f"{what}: already built ({folder})")
        return json.loads(marker.read_text())
    say(f"{what}: build-geom ({confs} ETKDG embeddings per molecule, MMFF94) -> {folder}")
    started = time.perf_counter()
    report = build_geom_folder(smi, folder, BuildSettings(n_confs=confs, seed=seed),
                               workers=workers, split_fractions=split)
    done = dataclasses.asdict(report) | {"seconds": round(time.perf_counter() - started, 1)}
    atomic_json(marker, done)
    say(f"{what}: built {report.built}, failed {report.failed} "
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
        atomic_json(data / "test_dropped.json", dropped)
    molecules = _read_test_csv(data / "test_molecules.csv")
    dropped = json.loads((data / "test_dropped.json").read_text())
    say(f"test set: {len(molecules)} GEOM-Drugs test molecules with references "
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
    say(f"stage 3/4 prepare: {geom_dir} -> {cache}")
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


def require_geom_dir(geom_dir: str | None) -> None:
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
    overrides = [*plan.preset.train_overrides, f"name={job_name(mode, seed)}", f"seed={seed}",
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
    from conformer.model_io import export_checkpoint, load_model
    from conformer.train.run import build_network, train

    config = train_config(plan, mode, seed)
    run_dir = config.run_path
    marker = run_dir / "reproduce_train.json"
    model_path = plan.root / "models" / f"{job_name(mode, seed)}.pt"
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
    atomic_json(marker, info)
    return info


def _generate_stage(plan: Plan, method: str, seed: int, model_path: str | None) -> dict:
    """``conformer generate`` for one row: the model file of a trained mode, or an RDKit
    method; written to ``generated/<method>_s<seed>.sdf`` (generate resumes by itself)."""
    from conformer.generation import GenerateOptions, generate_file

    out = plan.root / "generated" / f"{job_name(method, seed)}.sdf"
    marker = out.with_suffix(".summary.json")
    if marker.exists() and out.exists():
        return json.loads(marker.read_text())
    model = model_path is not None
    # bond_check off: the table scores the samples as drawn, as earlier tables and peers'
    # protocols do (generate's default rejects and resamples implausible conformers)
    options = GenerateOptions(method="model" if model else method, ckpt=model_path,
                              ratio=plan.preset.ratio, bond_check=False,
                              steps=plan.preset.sample_steps if model else None,
                              batch_size=plan.preset.batch_size, seed=seed,
                              workers=plan.threads if model else 1, progress=False)
    summary = generate_file(plan.test_csv, out, options).as_dict()
    summary["options"] = {k: v for k, v in dataclasses.asdict(options).items()
                          if k != "progress"}
    atomic_json(marker, summary)
    return summary


def _load_references(plan: Plan) -> dict:
    from conformer.evaluate.evaluator import load_references

    if plan.geom_test_csv:
        return load_references(Path(plan.references), test_csv=Path(plan.geom_test_csv))
    return load_references(Path(plan.references), ref_key="molecule")


def _evaluate_stage(plan: Plan, method: str, seed: int) -> dict:
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate

    generated = plan.root / "generated" / f"{job_name(method, seed)}.sdf"
    out = plan.root / "eval" / job_name(method, seed)
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


def run_job_task(task: tuple[Plan, str, int]) -> dict:
    """:func:`run_job` of one ``(plan, method, seed)`` (the form a worker pool hands out)."""
    return run_job(*task)


def sampler_evaluations(config, preset: DrugsPreset) -> int:
    """Network evaluations per generated conformer under the preset's sampler settings."""
    from conformer.diffusion import build_diffusion

    return build_diffusion(config.diffusion).num_evaluations(
        preset.sample_steps or config.diffusion.sample_steps)
