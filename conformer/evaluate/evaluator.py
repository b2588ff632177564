"""Evaluate a generated SDF against reference conformers: RMSD matrices, COV/MAT, validity.

References come from one of three layouts (:func:`load_references`):

- a multi-record SDF (``.sdf`` or ``.sdf.gz``) grouped by a property (Hutchison: ``molecule``);
- a GEOM ``rdkit_folder`` plus a test CSV: the references of a test molecule are all of its
  GEOM conformers whose heavy-atom, non-isomeric canonical SMILES equals the molecule's;
- a ``test_mols.pkl``-style pickle: dict SMILES -> list of RDKit molecules (trusted files only).

Generated records (see :mod:`conformer.sdf_io`) are matched to a reference group by ``name``;
failing that by isomeric canonical SMILES of their ``smiles`` property, then by non-isomeric
canonical SMILES when that is unambiguous. Generated groups matching no reference are listed.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger
from tqdm import tqdm

from conformer.errors import UserInputError
from conformer.evaluate import metrics as M
from conformer.evaluate.rmsd import DEFAULT_MAX_MATCHES, rmsd_matrix
from conformer.evaluate.validity import SETTINGS as VALIDITY_SETTINGS
from conformer.evaluate.validity import summarize, validity_report
from conformer.sdf_io import read_conformer_groups
from conformer.versions import environment_info, file_sha256, stable_hash


@dataclass
class EvaluationSettings:
    """Every choice the numbers depend on; written into ``results.json``."""

    threshold: float = 0.75
    dataset: str = "drugs"
    ref_key: str = "molecule"
    max_matches: int = DEFAULT_MAX_MATCHES
    symmetrize_conjugated_terminal_groups: bool = True
    rmsd: str = ("heavy atoms (RemoveHs); rdMolAlign.GetBestRMS(ref, gen) semantics: "
                 "substructure self-matches uniquify=False, useChirality=False; proper rotation")
    comparison: str = "strict <"
    empty_generation: str = M.EMPTY_GENERATION_POLICY
    generated_matching: str = ("name, else isomeric canonical SMILES, else non-isomeric "
                               "canonical SMILES if unique")
    graph_mismatch: str = ("generated conformers whose heavy-atom graph does not match the "
                           "reference are dropped and counted (n_gen_mismatched)")
    only_generated: bool = False
    validity_confs_per_molecule: int = 4
    validity: dict = field(default_factory=lambda: dict(VALIDITY_SETTINGS))


def canonical(smiles_or_mol, isomeric: bool) -> str | None:
    """Heavy-atom canonical SMILES (non-isomeric drops stereo), or None if unparsable."""
    mol = Chem.MolFromSmiles(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
    if mol is None:
        return None
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(Chem.Mol(mol)), isomericSmiles=isomeric)
    except (RuntimeError, ValueError):  # RDKit sanitisation errors (e.g. a reacted conformer)
        return None


def load_references(path: Path, ref_key: str = "molecule", test_csv: Path | None = None,
                    dataset: str = "drugs") -> dict[str, list[Chem.Mol]]:
    """Reference conformers grouped by molecule name (see module docstring for layouts)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"--references {path}: not found")
    if path.is_dir():
        if test_csv is None:
            raise UserInputError(f"--references {path} is a GEOM folder: give --test-csv")
        return _load_geom_references(path, Path(test_csv), dataset)
    if path.suffix in (".pkl", ".pickle"):
        with open(path, "rb") as handle:
            data = pickle.load(handle)
        if not isinstance(data, dict):
            raise UserInputError(f"--references {path}: expected a dict SMILES -> molecules")
        return {str(k): list(v) for k, v in data.items() if len(v)}
    if not (path.name.endswith(".sdf") or path.name.endswith(".sdf.gz")):
        raise UserInputError(f"--references {path}: expected .sdf, .sdf.gz, .pkl or a folder")
    return read_conformer_groups(path, key=ref_key)


def _load_geom_references(geom_dir: Path, test_csv: Path, dataset: str) -> dict:
    from conformer.data.geom import read_molecule_pickle, read_summary
    from conformer.data.splits import load_test_smiles

    summary_path = geom_dir / f"summary_{dataset}.json"
    if not summary_path.is_file():
        raise UserInputError(f"--references {geom_dir}: no summary_{dataset}.json")
    summary = read_summary(geom_dir, dataset)
    references = {}
    for molecule in load_test_smiles(test_csv):
        entry = summary.get(molecule.smiles)
        if entry is None or "pickle_path" not in entry:
            references[molecule.smiles] = []
            continue
        record = read_molecule_pickle(geom_dir / entry["pickle_path"])
        target = canonical(molecule.smiles, isomeric=False)
        references[molecule.smiles] = [
            conf["rd_mol"] for conf in record["conformers"]
            if canonical(conf["rd_mol"], isomeric=False) == target
        ]
    return references


def match_generated(references: dict[str, list[Chem.Mol]], generated: dict[str, list[Chem.Mol]]
                    ) -> tuple[dict[str, list[Chem.Mol]], list[dict]]:
    """Generated conformers per reference name, and the generated groups that matched none."""
    by_iso: dict[str, list[str]] = defaultdict(list)
    by_flat: dict[str, list[str]] = defaultdict(list)
    for name, mols in references.items():
        smiles = _group_smiles(name, mols)
        if smiles:
            by_iso[canonical(smiles, True) or ""].append(name)
            by_flat[canonical(smiles, False) or ""].append(name)
    matched: dict[str, list[Chem.Mol]] = defaultdict(list)
    unmatched = []
    for gen_name, mols in generated.items():
        if gen_name in references:
            matched[gen_name].extend(mols)
            continue
        smiles = mols[0].GetProp("smiles") if mols[0].HasProp("smiles") else None
        iso = canonical(smiles, True) if smiles else None
        flat = canonical(smiles, False) if smiles else None
        if iso and len(by_iso.get(iso, [])) == 1:
            matched[by_iso[iso][0]].extend(mols)
        elif flat and len(by_flat.get(flat, [])) == 1:
            matched[by_flat[flat][0]].extend(mols)
        else:
            unmatched.append({"name": gen_name, "smiles": smiles, "n_gen": len(mols),
                              "reason": "matches no reference group by name or SMILES"})
    return dict(matched), unmatched


def _group_smiles(name: str, mols: list[Chem.Mol]) -> str | None:
    first = mols[0] if mols else None
    if first is not None:
        return Chem.MolToSmiles(Chem.RemoveHs(Chem.Mol(first)))
    return name if Chem.MolFromSmiles(name) is not None else None


# RDKit pickles coordinates as float32 by default; workers must see the exact float64 values.
_BINARY_OPTIONS = Chem.PropertyPickleOptions.AllProps | Chem.PropertyPickleOptions.CoordsAsDouble


def _to_bytes(mols: list[Chem.Mol]) -> list[bytes]:
    return [mol.ToBinary(_BINARY_OPTIONS) for mol in mols]


def evaluate_molecule(task: tuple) -> dict:
    """Worker: RMSD matrix, scores and validity of one molecule (picklable in and out)."""
    name, refs, gens, settings_dict = task
    refs, gens = [Chem.Mol(b) for b in refs], [Chem.Mol(b) for b in gens]
    RDLogger.DisableLog("rdApp.*")
    settings = EvaluationSettings(**settings_dict)
    out: dict = {"name": name, "n_gen_mismatched": 0, "error": None, "validity": None}
    if not gens:
        out["rmsd"] = np.zeros((len(refs), 0))
        return out
    matrix = rmsd_matrix(refs, gens, settings.max_matches,
                         settings.symmetrize_conjugated_terminal_groups, on_mismatch="nan")
    keep = ~np.isnan(matrix).any(axis=0)
    out["n_gen_mismatched"] = int((~keep).sum())
    out["rmsd"] = matrix[:, keep]
    kept = [g for g, k in zip(gens, keep, strict=True) if k]
    if kept and settings.validity_confs_per_molecule > 0:
        sample = kept[: settings.validity_confs_per_molecule]
        try:
            reports = [validity_report(g, g.GetProp("smiles") if g.HasProp("smiles")
                                       else _group_smiles(name, refs)) for g in sample]
            out["validity"] = [e for r in reports for e in r["per_conformer"]]
        except Exception as error:  # noqa: BLE001 - reported, never hides COV/MAT
            out["error"] = f"validity: {error}"
    return out


def evaluate(generated_path: Path, references: dict[str, list[Chem.Mol]], out_dir: Path,
             settings: EvaluationSettings, workers: int = 1, progress: bool = True,
             extra_settings: dict | None = None) -> dict:
    """Evaluate and write ``results.json``, ``table.md``, ``coverage.png``, ``rmsd.npz``."""
    unreadable: list[dict] = []
    generated = read_conformer_groups(generated_path, key="name", errors=unreadable)
    matched, unmatched = match_generated(references, generated)
    failures: list[dict] = unreadable + list(unmatched)
    names = sorted(references)
    skipped_no_refs = [n for n in names if not references[n]]
    for name in skipped_no_refs:
        failures.append({"name": name, "reason": "no reference conformer (excluded)"})
    names = [n for n in names if references[n]]
    if settings.only_generated:
        names = [n for n in names if n in matched]
    settings_dict = asdict(settings)
    tasks = [(n, _to_bytes(references[n]), _to_bytes(matched.get(n, [])), settings_dict)
             for n in names]
    out_dir = Path(out_dir)
    cache = _MoleculeCache(out_dir / "per_molecule_cache", {
        "settings": settings_dict, "generated_sha256": file_sha256(generated_path),
        "references": _references_digest(references, names)})
    results = [r for r in (cache.load(n) for n in names) if r is not None]
    todo = [t for t in tasks if not cache.has(t[0])]
    iterator = _run_tasks(todo, workers)
    for result in tqdm(iterator, total=len(todo), desc="evaluate", disable=not progress):
        cache.save(result)
        results.append(result)
    results.sort(key=lambda r: r["name"])

    scores, matrices, validity_entries = [], {}, []
    for r in results:
        score = M.molecule_scores(r["name"], r["rmsd"], settings.threshold)
        scores.append(score)
        matrices[r["name"]] = r["rmsd"]
        if r["rmsd"].shape[1] == 0:
            reason = ("no generated conformer" if r["n_gen_mismatched"] == 0 else
                      f"all {r['n_gen_mismatched']} generated conformers have a different graph")
            failures.append({"name": r["name"], "reason": reason + " (coverage 0, MAT excluded)"})
        elif r["n_gen_mismatched"]:
            failures.append({"name": r["name"], "reason": f"{r['n_gen_mismatched']} generated "
                             "conformers have a different graph (dropped)"})
        if r["error"]:
            failures.append({"name": r["name"], "reason": r["error"]})
        validity_entries.extend(r["validity"] or [])

    table_metrics = M.aggregate(scores, settings.threshold)
    curves = M.coverage_curves(matrices)
    per_molecule = [s.as_dict() | {"n_gen_mismatched": r["n_gen_mismatched"]}
                    for s, r in zip(scores, results, strict=True)]
    document = {
        "metrics": table_metrics,
        "per_molecule": per_molecule,
        "failures": failures,
        "n_failures": len(failures),
        "validity": summarize(validity_entries) | {"settings": settings.validity},
        "curves": curves,
        "settings": settings_dict | (extra_settings or {}) | {
            "generated": str(generated_path), "generated_sha256": file_sha256(generated_path),
            "environment": environment_info()},
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    np.savez_compressed(out_dir / "rmsd.npz", **{f"m{i}": m for i, m in
                                                 enumerate(matrices.values())},
                        names=np.array(list(matrices)))
    (out_dir / "table.md").write_text(_table_markdown(document))
    plot_coverage(curves, out_dir / "coverage.png", settings.threshold)
    return document


def _references_digest(references: dict[str, list[Chem.Mol]], names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        for blob in _to_bytes(references[name]):
            digest.update(blob)
    return digest.hexdigest()[:16]


class _MoleculeCache:
    """Per-molecule results on disk, so an interrupted evaluation resumes (rerun the command).

    One NPZ per molecule (arrays and a JSON string; no pickles) under ``folder``; the folder
    holds ``key.json`` (settings, generated-file hash, references hash) and is emptied when the
    key changes, so stale results are never mixed in.
    """

    def __init__(self, folder: Path, key: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_path = self.folder / "key.json"
        text = json.dumps(key, sort_keys=True, default=str)
        if not key_path.exists() or key_path.read_text() != text:
            for old in self.folder.glob("*.npz"):
                old.unlink()
            key_path.write_text(text)

    def _path(self, name: str) -> Path:
        return self.folder / f"{stable_hash(name, 24)}.npz"

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def load(self, name: str) -> dict | None:
        path = self._path(name)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return meta | {"rmsd": data["rmsd"]}

    def save(self, result: dict) -> None:
        meta = {k: v for k, v in result.items() if k != "rmsd"}
        path = self._path(result["name"])
        partial = path.with_suffix(".tmp.npz")
        np.savez(partial, rmsd=result["rmsd"], meta=np.array(json.dumps(meta)))
        partial.replace(path)  # atomic: a killed run never leaves half a file


def _run_tasks(tasks: list, workers: int):
    if workers <= 1:
        return map(evaluate_molecule, tasks)
    return _pool_tasks(tasks, workers)


def _pool_tasks(tasks: list, workers: int):
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers)
    try:
        yield from pool.imap_unordered(evaluate_molecule, tasks, chunksize=1)
    finally:
        pool.close()
        pool.join()


def _table_markdown(document: dict) -> str:
    v = document["validity"]

    def fmt(x):
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [M.format_table(document["metrics"], "COV / MAT"),
             f"failures listed in results.json: {document['n_failures']}", "",
             "## Validity (sampled generated conformers)", "",
             "| conformers | bonds within 0.1 A of MMFF % | angles within 10 deg % | "
             "clash-free % | stereo correct % |", "|---|---|---|---|---|",
             f"| {v['n_conformers']} | {fmt(v['bonds_ok_fraction_mean'])} | "
             f"{fmt(v['angles_ok_fraction_mean'])} | {fmt(v['clash_free_fraction'])} | "
             f"{fmt(v['stereo_ok_fraction'])} |", ""]
    return "\n".join(lines)


def plot_coverage(curves: dict, path: Path, threshold: float) -> None:
    """COV-R and COV-P (mean and median over molecules, %) against the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    x = curves["threshold"]
    for key, style in (("cov_r_mean", "-"), ("cov_r_median", "--"), ("cov_p_mean", "-"),
                       ("cov_p_median", "--")):
        if curves[key]:
            ax.plot(x, [100 * v for v in curves[key]], style, label=key.replace("_", " "))
    ax.axvline(threshold, color="grey", lw=0.8)
    ax.set_xlabel("threshold delta (A)")
    ax.set_ylabel("coverage (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
