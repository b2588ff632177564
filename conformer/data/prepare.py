"""``conformer prepare``: filter and featurise a GEOM rdkit_folder into one NPZ per molecule.

Filters (docs/design/protocol.md section 3), in order:
    molecule: SMILES with '.' (fragments); SMILES RDKit cannot parse; fewer than
              ``min_heavy_atoms`` heavy atoms; no conformer left; featuriser refuses it.
    conformer: heavy-atom non-isomeric canonical SMILES of ``rd_mol`` differs from the
              molecule's (it reacted); graph differs from the first kept conformer's (the
              record stores one graph); 3D stereo (R/S, E/Z perceived from the coordinates)
              differs from the first kept conformer's (the features state one); beyond the
              ``max_confs`` highest Boltzmann weights (not counted as a drop).

Layout: ``CACHE_DIR/<dataset>-<paramhash>/<split>/<index:07d>.npz`` where index is the
molecule's position in the sorted pickle list, ``manifest.json`` (merged over shards) and
``failures.csv`` next to the split folders. The parameter hash covers every setting,
``FEATURE_VERSION`` and the split file's sha256, so a changed setting never reuses a cache.

Resuming: each shard appends one JSON line per finished molecule to ``progress-<i>-of-<n>.jsonl``
(outcome and drop counts); a rerun skips those molecules, so it does no work once all are done.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import os
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from conformer.cli_settings import option
from conformer.data import geom, keys
from conformer.data.features import FEATURE_VERSION, FeaturizationError, featurize_mol
from conformer.data.splits import SPLIT_NAMES, load_split
from conformer.errors import UserInputError
from conformer.parallel import parallel_map
from conformer.progress import progress as show_progress
from conformer.versions import environment_info, file_sha256, stable_hash

FILTER_VERSION = 1
CACHE_ENV = "CONFORMER_CACHE"

REASON_FRAGMENTS = "fragments ('.' in SMILES)"
REASON_UNPARSABLE = "RDKit cannot parse the SMILES"
REASON_SMALL = "fewer than {} heavy atoms"
REASON_NO_CONFORMER = "no conformer left after the filters"
REASON_REACTED = "conformer graph differs from the SMILES (reacted)"
REASON_OTHER_GRAPH = "conformer atom order or bonds differ from the first kept conformer"
REASON_OTHER_STEREO = "conformer 3D stereochemistry differs from the first kept conformer"
REASON_UNREADABLE = "pickle cannot be read"


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """The settings the records depend on (all of them in the parameter hash); each is also a
    ``conformer prepare`` option with this default and help (see ``conformer.cli_settings``)."""

    dataset: str = option("drugs", help="dataset folder name inside geom_dir: drugs or qm9")
    max_confs: int = option(30, help="keep at most this many conformers per molecule, highest "
                                     "Boltzmann weight first")
    min_heavy_atoms: int = option(4, help="drop molecules with fewer heavy atoms")

    def parameter_hash(self, split_sha256: str) -> str:
        return stable_hash({**dataclasses.asdict(self), "feature_version": FEATURE_VERSION,
                            "filter_version": FILTER_VERSION, "split_sha256": split_sha256})[:12]


def default_cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def _as_recorded(rd_mol: Chem.Mol) -> Chem.Mol:
    """``rd_mol`` as a reader of the record's MOLBLOCK sees it: properties recomputed by RDKit
    and stereo perceived from the 3D coordinates, so features, MOLBLOCK and positions agree."""
    mol = Chem.MolFromMolBlock(Chem.MolToMolBlock(rd_mol), removeHs=False)
    if mol is None:
        raise ValueError("RDKit cannot read the conformer's molblock back")
    return mol


def _graph_signature(mol: Chem.Mol) -> tuple:
    """Elements in atom order and bonds with orders: the graph the record stores."""
    atoms = tuple(a.GetAtomicNum() for a in mol.GetAtoms())
    bonds = tuple(sorted((min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()),
                          max(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), str(b.GetBondType()))
                         for b in mol.GetBonds()))
    return atoms, bonds


def _heavy_nonisomeric(mol: Chem.Mol) -> str | None:
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    except Exception:  # an rd_mol RDKit cannot sanitise counts as reacted
        return None


def process_molecule(molecule: dict, geom_key: str, settings: PrepareSettings
                     ) -> tuple[dict | None, str | None, list[tuple[int | None, str]]]:
    """Filter and featurise one GEOM molecule dict.

    Returns (record or None, molecule failure reason or None, dropped conformers as
    (geom_id, reason)). The record maps keys.py names to numpy arrays / unicode scalars;
    POSITIONS float32 [C, N, 3] in Angstrom, sorted by Boltzmann weight (descending), and
    BOLTZMANN_WEIGHTS float32 [C] renormalised to sum 1 over the kept conformers (uniform when
    GEOM gives all of them zero weight).
    """
    smiles = molecule.get("smiles", geom_key)
    if "." in smiles:
        return None, REASON_FRAGMENTS, []
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, REASON_UNPARSABLE, []
    if mol.GetNumHeavyAtoms() < settings.min_heavy_atoms:
        return None, REASON_SMALL.format(settings.min_heavy_atoms), []
    reference = Chem.MolToSmiles(mol, isomericSmiles=False)
    dropped: list[tuple[int | None, str]] = []
    matching = []
    for conformer in molecule.get("conformers", []):
        rd_mol = conformer.get("rd_mol")
        if rd_mol is None or rd_mol.GetNumConformers() < 1 or \
                _heavy_nonisomeric(rd_mol) != reference:
            dropped.append((conformer.get("geom_id"), REASON_REACTED))
        else:
            matching.append(conformer)
    matching.sort(key=lambda c: -float(c.get("boltzmannweight", 0.0)))  # stable: ties keep order
    kept, recorded_first, graph, stereo = [], None, None, None
    for conformer in matching:
        if len(kept) == settings.max_confs:
            break  # truncation is the protocol, not a failure: not listed
        try:
            recorded = _as_recorded(conformer["rd_mol"])
            this_graph = _graph_signature(recorded)
            this_stereo = Chem.MolToSmiles(Chem.RemoveHs(recorded))
        except Exception:
            dropped.append((conformer.get("geom_id"), REASON_REACTED))
            continue
        if graph is None:
            recorded_first, graph, stereo = recorded, this_graph, this_stereo
        elif this_graph != graph:
            dropped.append((conformer.get("geom_id"), REASON_OTHER_GRAPH))
            continue
        elif this_stereo != stereo:
            dropped.append((conformer.get("geom_id"), REASON_OTHER_STEREO))
            continue
        kept.append(conformer)
    if not kept:
        return None, REASON_NO_CONFORMER, dropped
    try:
        record: dict = featurize_mol(recorded_first)
    except FeaturizationError as error:
        return None, f"featuriser: {error}", dropped
    weights = np.array([float(c.get("boltzmannweight", 0.0)) for c in kept], dtype=np.float64)
    weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(kept), 1 / len(kept))
    record[keys.POSITIONS] = np.stack(
        [c["rd_mol"].GetConformer().GetPositions() for c in kept]).astype(np.float32)
    record[keys.BOLTZMANN_WEIGHTS] = weights.astype(np.float32)
    record[keys.SMILES] = np.str_(Chem.MolToSmiles(mol))
    record[keys.GEOM_KEY] = np.str_(geom_key)
    record[keys.MOLBLOCK] = np.str_(Chem.MolToMolBlock(recorded_first))
    return record, None, dropped


def write_record(path: Path, record: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **record)
    geom.atomic_write_bytes(path, buffer.getvalue())


def _work(task: tuple[int, str, str, str, PrepareSettings]) -> dict:
    """Worker: one molecule -> NPZ (if kept) and a progress line (a JSON-able dict)."""
    index, split, pickle_path, out_path, settings = task
    RDLogger.DisableLog("rdApp.*")
    try:
        molecule = geom.read_molecule_pickle(Path(pickle_path))
    except Exception as error:
        return {"index": index, "split": split, "failure": f"{REASON_UNREADABLE}: {error}",
                "dropped": [], "pickle": Path(pickle_path).name}
    key = molecule.get("smiles") or Path(pickle_path).stem
    try:
        record, failure, dropped = process_molecule(molecule, key, settings)
    except Exception as error:  # one odd molecule must not stop a 300k-molecule run
        record, failure, dropped = None, f"{type(error).__name__}: {error}", []
    if record is not None:
        write_record(Path(out_path), record)
    dropped = [(None if geom_id is None else int(geom_id), reason) for geom_id, reason in dropped]
    return {"index": index, "split": split, "failure": failure, "dropped": dropped,
            "pickle": Path(pickle_path).name, "geom_key": key,
            "n_confs": 0 if record is None else int(record[keys.POSITIONS].shape[0])}


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (0-based) -> (i, n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserInputError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserInputError(f"--shard {text!r}: need 0 <= i < n (shards are numbered from 0)")
    return i, n


def _read_progress(path: Path) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if path.exists():
        with open(path) as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by an interruption: redo it
                    continue
                done[int(entry["index"])] = entry
    return done


def _summarise(entries: list[dict]) -> dict:
    records = {name: 0 for name in SPLIT_NAMES}
    conformers = {name: 0 for name in SPLIT_NAMES}
    molecule_failures: collections.Counter = collections.Counter()
    conformer_drops: collections.Counter = collections.Counter()
    for entry in entries:
        if entry["failure"] is None:
            records[entry["split"]] += 1
            conformers[entry["split"]] += entry["n_confs"]
        else:
            molecule_failures[entry["failure"]] += 1
        for _, reason in entry["dropped"]:
            conformer_drops[reason] += 1
    return {"molecules_processed": len(entries), "records": records,
            "conformers": conformers,
            "molecule_failures": dict(sorted(molecule_failures.items())),
            "conformer_drops": dict(sorted(conformer_drops.items()))}


@dataclasses.dataclass
class PrepareReport:
    out_dir: Path
    processed_now: int
    already_done: int
    merged: bool


def prepare(geom_dir: Path, split_file: Path, cache_dir: Path | None,
            settings: PrepareSettings = PrepareSettings(), workers: int = 1,
            shard: tuple[int, int] = (0, 1), allow_split_subset: bool = False,
            progress: bool = True) -> PrepareReport:
    """Prepare (or resume) the records of ``geom_dir`` for the molecules of ``split_file``."""
    geom_dir = Path(geom_dir)
    if cache_dir is None:
        cache_dir = default_cache_dir()
        if cache_dir is None:
            raise UserInputError(f"--out not given and ${CACHE_ENV} not set: where should the "
                                 "records go?")
    if workers < 1:
        raise UserInputError(f"--workers {workers}: must be >= 1")
    if not (geom_dir / settings.dataset).is_dir():
        raise UserInputError(f"GEOM folder {geom_dir}: no '{settings.dataset}/' folder of "
                             "molecule pickles (wrong path or --dataset?)")
    pickles = geom.sorted_pickle_paths(geom_dir, settings.dataset)
    splits = load_split(split_file, n_molecules=len(pickles), allow_subset=allow_split_subset)
    split_sha = file_sha256(split_file)
    out_dir = Path(cache_dir) / f"{settings.dataset}-{settings.parameter_hash(split_sha)}"
    shard_index, n_shards = shard
    shard_tag = f"{shard_index}-of-{n_shards}"
    for name in SPLIT_NAMES:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / f"progress-{shard_tag}.jsonl"
    done = _read_progress(progress_path)

    tasks = []
    for name, indices in zip(SPLIT_NAMES, splits, strict=True):
        for index in indices[indices % n_shards == shard_index]:
            index = int(index)
            record_path = out_dir / name / f"{index:07d}.npz"
            entry = done.get(index)
            if entry is not None and (entry["failure"] is not None or record_path.exists()):
                continue
            tasks.append((index, name, str(pickles[index]), str(record_path), settings))
    already = len(done)
    started = time.time()
    if tasks:
        bar = show_progress(total=len(tasks), desc=f"prepare shard {shard_tag}", unit="mol",
                            enabled=progress)
        try:
            with (closing(parallel_map(_work, tasks, workers, ordered=False, chunksize=4))
                  as results, open(progress_path, "a+") as log):
                log.seek(0, os.SEEK_END)
                if log.tell() > 0:
                    log.seek(log.tell() - 1)
                    if log.read(1) != "\n":  # an interrupted write: end its cut line first
                        log.write("\n")
                for entry in results:
                    log.write(json.dumps(entry) + "\n")
                    log.flush()
                    done[entry["index"]] = entry
                    bar.update(1)
        finally:
            bar.close()

    entries = sorted(done.values(), key=lambda e: e["index"])
    shard_manifest = {
        "parameter_hash": out_dir.name.split("-")[-1],
        "settings": dataclasses.asdict(settings),
        "feature_version": FEATURE_VERSION, "filter_version": FILTER_VERSION,
        "geom_dir": str(geom_dir.resolve()), "split_file": str(Path(split_file).resolve()),
        "split_sha256": split_sha, "split_sizes": {n: int(len(s)) for n, s in
                                                   zip(SPLIT_NAMES, splits, strict=True)},
        "n_pickles": len(pickles), "shard": [shard_index, n_shards],
        "environment": environment_info(), **_summarise(entries),
    }
    geom.atomic_write_json(out_dir / f"manifest-shard-{shard_tag}.json", shard_manifest)
    merged = _merge_if_complete(out_dir, n_shards)
    if tasks:
        print(f"prepare: processed {len(tasks)} molecules in {time.time() - started:.1f} s "
              f"({already} already done) -> {out_dir}")
    else:
        print(f"prepare: nothing to do, all {already} molecules of shard {shard_tag} are "
              f"already prepared in {out_dir}")
    return PrepareReport(out_dir=out_dir, processed_now=len(tasks), already_done=already,
                         merged=merged)


def _merge_if_complete(out_dir: Path, n_shards: int) -> bool:
    """Write ``manifest.json`` and ``failures.csv`` over all shards once every shard is done."""
    paths = [out_dir / f"manifest-shard-{i}-of-{n_shards}.json" for i in range(n_shards)]
    if not all(p.exists() for p in paths):
        return False
    shard_manifests = [json.loads(p.read_text()) for p in paths]
    entries = []
    for i in range(n_shards):
        entries += _read_progress(out_dir / f"progress-{i}-of-{n_shards}.jsonl").values()
    expected = sum(shard_manifests[0]["split_sizes"].values())
    if len(entries) != expected:
        return False  # a shard was interrupted: its rerun completes the merge
    entries.sort(key=lambda e: e["index"])
    merged = {k: v for k, v in shard_manifests[0].items() if k != "shard"}
    merged.update(_summarise(entries))
    merged["n_shards"] = n_shards
    geom.atomic_write_json(out_dir / "manifest.json", merged)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "index", "pickle", "level", "geom_id", "reason"])
    for entry in entries:
        if entry["failure"] is not None:
            writer.writerow([entry["split"], entry["index"], entry["pickle"], "molecule", "",
                             entry["failure"]])
        for geom_id, reason in entry["dropped"]:
            writer.writerow([entry["split"], entry["index"], entry["pickle"], "conformer",
                             geom_id, reason])
    geom.atomic_write_text(out_dir / "failures.csv", buffer.getvalue())
    return True
