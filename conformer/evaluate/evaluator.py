"""Evaluate a generated SDF against reference conformers: RMSD matrices, COV/MAT, validity.

References come from one of three layouts (:func:`load_references`):

- a multi-record SDF (``.sdf`` or ``.sdf.gz``) grouped by a property (Hutchison: ``molecule``);
- a GEOM ``rdkit_folder`` plus a test CSV: the references of a test molecule are all of its
  GEOM conformers whose heavy-atom, non-isomeric canonical SMILES equals the molecule's;
- a ``test_mols.pkl``-style pickle: dict SMILES -> list of RDKit molecules (trusted files only).

SDF records are grouped by a key property: ``--ref-key`` when given, else the first of
``molecule`` (GEOM/Hutchison files), ``name`` (``conformer generate``'s own output) and the
record title that the first record has (:func:`detect_group_key`). Records that share a name
but carry different ``smiles`` (two different molecules) are kept apart, under
``"name [canonical SMILES]"``, and the clash is reported.

Generated records (see :mod:`conformer.sdf_io`) are matched to a reference group by name when
their molecule is the reference's (same heavy-atom graph); failing that by isomeric canonical
SMILES of their ``smiles`` property, then by non-isomeric canonical SMILES when that is
unambiguous. Generated groups matching no reference are listed; when none matches at all, the
evaluation stops with one line naming the keys tried. A generated molecule with fewer records
than its records' ``n_conformers`` (a file cut short) is scored on what is there and reported
as incomplete. RMSD matrices come from the batched engine
(:func:`conformer.evaluate.rmsd.rmsd_matrices`), a chunk of molecules at a time, each chunk's
per-molecule results cached on disk so that a rerun resumes.
"""

from __future__ import annotations

import functools
import json
import pickle
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger

from conformer.cli_settings import option
from conformer.errors import UserInputError
from conformer.evaluate import metrics as M
from conformer.evaluate.fast_sdf import ConformerRecords, read_record_groups, records_digest
from conformer.evaluate.rmsd import DEFAULT_MAX_MATCHES, rmsd_matrices
from conformer.evaluate.validity import SETTINGS as VALIDITY_SETTINGS
from conformer.evaluate.validity import summarize, validity_report
from conformer.progress import progress as show_progress
from conformer.sdf_io import iter_sdf, open_binary
from conformer.versions import environment_info, file_sha256, stable_hash


@dataclass
class EvaluationSettings:
    """Every choice the numbers depend on; written into ``results.json``. Each field with help
    is also a ``conformer evaluate`` option with this default and help (``conformer.cli_settings``).

    threshold: Angstrom, strict ``<``; None (the default) takes the dataset's from
    ``metrics.THRESHOLDS``, so it is always a number once constructed.
    """

    threshold: float | None = option(
        None, help="COV threshold delta in Angstrom, strict <",
        default_text="from --dataset: " + ", ".join(f"{name} {value}" for name, value
                                                     in M.THRESHOLDS.items()))
    dataset: str = option("drugs", choices=tuple(M.THRESHOLDS),
                          help="sets the default threshold and the GEOM summary file to read")
    ref_key: str = option(
        "molecule", help="SDF property that groups reference records",
        default_text="the first of 'molecule' (GEOM, Hutchison) and 'name' (`conformer "
                     "generate` output) the records have, else their title line")
    max_matches: int = option(DEFAULT_MAX_MATCHES,
                              help="cap on symmetry matches per molecule, as GetBestRMS's "
                                   "maxMatches (this default is GetBestRMS's)")
    symmetrize_conjugated_terminal_groups: bool = option(
        True, flag="--no-symmetrize-terminal-groups",
        help="do not treat the O/N of conjugated terminal groups (carboxylate, nitro) as "
             "interchangeable (GetBestRMS does by default)")
    rmsd: str = ("heavy atoms (RemoveHs); rdMolAlign.GetBestRMS(ref, gen) semantics: "
                 "substructure self-matches uniquify=False, useChirality=False; proper rotation")
    comparison: str = "strict <"
    empty_generation: str = M.EMPTY_GENERATION_POLICY
    generated_matching: str = ("name (same heavy-atom graph), else isomeric canonical SMILES, "
                               "else non-isomeric canonical SMILES if unique; same name with "
                               "different smiles kept apart")
    graph_mismatch: str = ("generated conformers whose heavy-atom graph does not match the "
                           "reference are dropped and counted (n_gen_mismatched)")
    only_generated: bool = option(False, help="evaluate only reference molecules that have "
                                              "generated records (partial runs); recorded in "
                                              "the settings")
    validity_confs_per_molecule: int = option(
        4, flag="--validity-confs", metavar="N",
        help="generated conformers per molecule checked for validity (MMFF bonds/angles, "
             "clashes, stereo); 0 skips")
    validity: dict = field(default_factory=lambda: dict(VALIDITY_SETTINGS))

    def __post_init__(self) -> None:
        if self.threshold is None:
            if self.dataset not in M.THRESHOLDS:
                raise UserInputError(f"dataset {self.dataset!r}: no default threshold (known: "
                                     f"{', '.join(M.THRESHOLDS)}); give one")
            self.threshold = M.THRESHOLDS[self.dataset]


def canonical(smiles_or_mol, isomeric: bool) -> str | None:
    """Heavy-atom canonical SMILES (non-isomeric drops stereo), or None if unparsable."""
    mol = Chem.MolFromSmiles(smiles_or_mol) if isinstance(smiles_or_mol, str) else smiles_or_mol
    if mol is None:
        return None
    try:
        return Chem.MolToSmiles(Chem.RemoveHs(Chem.Mol(mol)), isomericSmiles=isomeric)
    except (RuntimeError, ValueError):  # RDKit sanitisation errors (e.g. a reacted conformer)
        return None


# Group keys tried, in order, when none is given: GEOM/Hutchison files, then generate's output.
GROUP_KEYS = ("molecule", "name")
TITLE_KEY = "_Name"  # the record's first line, RDKit's name for it
# Properties `conformer generate` writes on every record (see conformer.sdf_io).
GENERATE_PROPS = ("input_line", "n_conformers")


def detect_group_key(path: Path, option: str) -> str:
    """The property that groups the records of SDF ``path`` into molecules: the first of
    :data:`GROUP_KEYS` its first readable record has, else its title line. ``option`` names
    the command-line option in errors."""
    for _, mol in iter_sdf(path, sanitize=False):
        if mol is None:
            continue
        for key in GROUP_KEYS:
            if mol.HasProp(key):
                return key
        if mol.HasProp(TITLE_KEY) and mol.GetProp(TITLE_KEY).strip():
            return TITLE_KEY
        raise UserInputError(f"{option} {path}: its records have none of the properties "
                             f"{', '.join(GROUP_KEYS)} and no title line; name the grouping "
                             "property with --ref-key")
    raise UserInputError(f"{option} {path}: no readable SDF record")


def _holds_no_record(path: Path) -> bool:
    """Whether SDF ``path`` exists and holds no record at all (empty, or whitespace only):
    what ``conformer generate`` leaves when every molecule failed. A missing file, or one
    with unreadable records, is not such a file."""
    if not path.is_file():
        return False
    with open_binary(path) as handle:
        return not any(line.strip() for line in handle)


def written_by_generate(mols) -> bool:
    """Whether these records carry the properties ``conformer generate`` writes."""
    return any(all(m.HasProp(p) for p in GENERATE_PROPS) for m in mols)


def load_references(path: Path, ref_key: str | None = None, test_csv: Path | None = None,
                    dataset: str = "drugs") -> dict[str, list[Chem.Mol]]:
    """Reference conformers grouped by molecule name (see module docstring for layouts);
    ``ref_key`` None detects the SDF grouping property (:func:`detect_group_key`). An SDF's
    groups are :class:`~conformer.evaluate.fast_sdf.ConformerRecords` (sequences of molecules
    built on demand), the other layouts' lists of molecules."""
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
    key = ref_key or detect_group_key(path, "--references")
    return read_record_groups(path, key=key)


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


def split_name_clashes(groups: dict[str, list[Chem.Mol]]
                       ) -> tuple[dict[str, ConformerRecords], list[dict]]:
    """Groups whose records carry different ``smiles`` (different molecules under one name)
    split into ``"name [canonical isomeric SMILES]"`` groups; returns the groups and one clash
    report per split name. Records without ``smiles`` stay with their name."""
    out: dict[str, ConformerRecords] = {}
    clashes = []
    for name, mols in groups.items():
        mols = ConformerRecords.from_molecules(mols)
        record_smiles = mols.props("smiles")
        texts = set(record_smiles) - {None}
        if len(texts) < 2:
            out[name] = mols
            continue
        canon = {t: canonical(t, True) or t for t in texts}
        if len(set(canon.values())) < 2:
            out[name] = mols
            continue
        parts: dict[str, list[int]] = defaultdict(list)
        for index, text in enumerate(record_smiles):
            smiles = canon.get(text) if text is not None else None
            parts[f"{name} [{smiles}]" if smiles else name].append(index)
        out.update({part: mols.select(indices) for part, indices in parts.items()})
        clashes.append({"name": name, "smiles": sorted(set(canon.values())),
                        "reason": f"{len(set(canon.values()))} different molecules share this "
                                  "name; kept apart as 'name [SMILES]'"})
    return out, clashes


class _Canonical:
    """:func:`canonical` of one SMILES, isomeric and not, from one parse (computed on first
    use; None where :func:`canonical` gives None)."""

    def __init__(self, smiles: str | None):
        self._smiles, self._heavy, self._texts = smiles, None, {}

    def text(self, isomeric: bool) -> str | None:
        if isomeric not in self._texts:
            if self._heavy is None:
                mol = Chem.MolFromSmiles(self._smiles) if self._smiles else None
                try:
                    self._heavy = False if mol is None else Chem.RemoveHs(mol)
                except (RuntimeError, ValueError):  # as canonical(): sanitisation errors
                    self._heavy = False
            self._texts[isomeric] = None if self._heavy is False else \
                Chem.MolToSmiles(Chem.Mol(self._heavy), isomericSmiles=isomeric)
        return self._texts[isomeric]


def match_generated(references: dict[str, list[Chem.Mol]], generated: dict[str, list[Chem.Mol]]
                    ) -> tuple[dict[str, ConformerRecords], list[dict]]:
    """Generated conformers per reference name, and the generated groups that matched none.

    By name only when the molecules agree (same non-isomeric heavy-atom SMILES, when the
    generated records carry ``smiles``); else by SMILES (module docstring). Canonical SMILES
    are computed only where a rule needs them (most groups match by name).
    """
    ref_smiles: dict[str, tuple[str | None, _Canonical]] = {}
    parsed: dict[str | None, _Canonical] = {}  # one parse per SMILES text

    def canonical_of(smiles: str | None) -> _Canonical:
        if smiles not in parsed:
            parsed[smiles] = _Canonical(smiles)
        return parsed[smiles]

    def reference(name: str) -> tuple[str | None, _Canonical]:
        if name not in ref_smiles:
            smiles = _group_smiles(name, references[name])
            ref_smiles[name] = smiles, canonical_of(smiles)
        return ref_smiles[name]

    by_smiles: list[dict[str, list[str]]] = []  # [isomeric, non-isomeric] -> names

    def lookup(isomeric: bool) -> dict[str, list[str]]:
        if not by_smiles:
            by_iso: dict[str, list[str]] = defaultdict(list)
            by_flat: dict[str, list[str]] = defaultdict(list)
            for name in references:
                smiles, canon = reference(name)
                if smiles:
                    by_iso[canon.text(True) or ""].append(name)
                    by_flat[canon.text(False) or ""].append(name)
            by_smiles.extend([by_iso, by_flat])
        return by_smiles[0 if isomeric else 1]

    matched: dict[str, list[ConformerRecords]] = defaultdict(list)
    unmatched = []
    for gen_name, mols in generated.items():
        mols = ConformerRecords.from_molecules(mols)
        smiles = mols.prop(0, "smiles")
        if gen_name in references and (not smiles or smiles == reference(gen_name)[0]):
            # the name rule below without canonical SMILES: no smiles passes it, and the
            # reference's own SMILES text has the reference's canonical forms
            matched[gen_name].append(mols)
            continue
        canon = canonical_of(smiles)
        flat = canon.text(False) if smiles else None
        if gen_name in references and (
                flat is None or (reference(gen_name)[1].text(False)
                                 if reference(gen_name)[0] else None) in (None, flat)):
            matched[gen_name].append(mols)
        elif smiles and canon.text(True) and len(lookup(True).get(canon.text(True), [])) == 1:
            matched[lookup(True)[canon.text(True)][0]].append(mols)
        elif flat and len(lookup(False).get(flat, [])) == 1:
            matched[lookup(False)[flat][0]].append(mols)
        else:
            unmatched.append({"name": gen_name, "smiles": smiles, "n_gen": len(mols),
                              "reason": "matches no reference group by name or SMILES"})
    return {name: parts[0] if len(parts) == 1 else ConformerRecords.concatenate(parts)
            for name, parts in matched.items()}, unmatched


def incomplete_molecules(generated: dict[str, list[Chem.Mol]]) -> dict[str, tuple[int, int]]:
    """``name -> (records present, records announced)`` for generated molecules with fewer
    records than their ``n_conformers`` property says (a file cut short, or unreadable
    records); counted per ``input_line``, so a name given on two input lines is judged per line."""
    out = {}
    for name, mols in generated.items():
        present: dict[str, int] = defaultdict(int)
        expected: dict[str, int] = {}
        mols = ConformerRecords.from_molecules(mols)
        # counted per distinct (line, total) text pair (few per molecule), not per record
        counts = Counter(zip(mols.props("input_line"), mols.props("n_conformers"), strict=True))
        totals: dict[str, set[int]] = defaultdict(set)
        for (line, total), count in counts.items():
            if line is None or total is None:
                continue
            present[line] += count
            try:
                value = int(total)
            except ValueError:
                continue
            totals[line].add(value)
        if any(len(values) > 1 for values in totals.values()):
            # a line announcing different totals: the last readable one counts, record order
            expected = _last_totals(mols)
        else:
            expected = {line: values.pop() for line, values in totals.items()}
        short = [(present[line], expected[line]) for line in expected
                 if present[line] < expected[line]]
        if short:
            out[name] = (sum(p for p, _ in short), sum(e for _, e in short))
    return out


def _last_totals(mols: ConformerRecords) -> dict[str, int]:
    """Per ``input_line``, the last of its records' ``n_conformers`` that reads as an integer."""
    expected: dict[str, int] = {}
    for line, total in zip(mols.props("input_line"), mols.props("n_conformers"), strict=True):
        if line is None or total is None:
            continue
        try:
            expected[line] = int(total)
        except ValueError:
            continue
    return expected


def _no_match_message(generated_path: Path, generated: dict, references: dict, gen_key: str
                      ) -> str:
    gen_name, gen_mols = next(iter(generated.items()))
    gen_smiles = gen_mols[0].GetProp("smiles") if gen_mols[0].HasProp("smiles") else None
    ref_name = next(iter(references))
    ref_smiles = _group_smiles(ref_name, references[ref_name])
    return (f"--generated {generated_path}: none of its {len(generated)} molecules matches any "
            f"of the {len(references)} reference molecules; tried the generated '{gen_key}' "
            "against the reference names, then the canonical SMILES of the 'smiles' property "
            f"(isomeric, then not); e.g. generated {gen_name!r} (smiles {gen_smiles!r}), "
            f"reference {ref_name!r} (smiles {ref_smiles!r}); check --references and --ref-key")


def _group_smiles(name: str, mols: list[Chem.Mol]) -> str | None:
    first = mols[0] if mols else None
    if first is not None:
        try:
            return Chem.MolToSmiles(Chem.RemoveHs(Chem.Mol(first)))
        except (RuntimeError, ValueError):
            return None
    return name if Chem.MolFromSmiles(name) is not None else None


# Molecules whose RMSD matrices are computed together (one call of the batched engine, its
# worker pool forked once) before their results are cached: a killed run loses at most one
# chunk. ~1M pairs is a few seconds of work, long enough that forking workers is cheap beside it.
CACHE_CHUNK_PAIRS = 1_000_000


def _chunks_by_pairs(names: list[str], pairs: dict[str, int], limit: int) -> list[list[str]]:
    chunks, current, total = [], [], 0
    for name in names:
        current.append(name)
        total += pairs[name]
        if total >= limit:
            chunks.append(current)
            current, total = [], 0
    if current:
        chunks.append(current)
    return chunks


def molecule_result(name: str, refs: list[Chem.Mol], gens: list[Chem.Mol], matrix: np.ndarray,
                    settings: EvaluationSettings) -> dict:
    """One molecule's cached result from its RMSD matrix (K, G), Angstrom, NaN columns for
    generated conformers whose graph does not match: those columns are dropped and counted,
    and the first kept conformers get the validity checks."""
    out: dict = {"name": name, "n_gen_mismatched": 0, "error": None, "validity": None}
    if not gens:
        out["rmsd"] = np.zeros((len(refs), 0))
        return out
    keep = ~np.isnan(matrix).any(axis=0)
    out["n_gen_mismatched"] = int((~keep).sum())
    out["rmsd"] = matrix[:, keep]
    kept = np.flatnonzero(keep)
    if len(kept) and settings.validity_confs_per_molecule > 0:
        # only these records are built as molecules (the fast reader's records are lazy)
        sample = [gens[int(i)] for i in kept[: settings.validity_confs_per_molecule]]
        try:
            reports = [validity_report(g, g.GetProp("smiles") if g.HasProp("smiles")
                                       else _group_smiles(name, refs)) for g in sample]
            out["validity"] = [e for r in reports for e in r["per_conformer"]]
        except Exception as error:  # noqa: BLE001 - reported, never hides COV/MAT
            out["error"] = f"validity: {error}"
    return out


def compute_chunks(names: list[str], references: dict[str, list[Chem.Mol]],
                   matched: dict[str, list[Chem.Mol]], settings: EvaluationSettings,
                   workers: int = 1, on_done=None):
    """:func:`molecule_result` for each name, one chunk (a list of results, see
    CACHE_CHUNK_PAIRS) at a time; ``on_done(n)`` is called as the engine finishes molecules
    (a progress bar's update)."""
    RDLogger.DisableLog("rdApp.*")
    pairs = {n: len(references[n]) * max(1, len(matched.get(n, []))) for n in names}
    for chunk in _chunks_by_pairs(names, pairs, CACHE_CHUNK_PAIRS):
        problems = [(references[n], matched.get(n, [])) for n in chunk]
        with_gens = [i for i, (_, gens) in enumerate(problems) if len(gens)]
        # the engine reads each run of records sharing a topology as one molecule with
        # many conformers: its per-conformer graph checks are then paid once per run
        engine_problems = [(ConformerRecords.from_molecules(problems[i][0]).engine_molecules(),
                            ConformerRecords.from_molecules(problems[i][1]).engine_molecules())
                           for i in with_gens]
        matrices = rmsd_matrices(engine_problems, workers=workers,
                                 max_matches=settings.max_matches,
                                 symmetrize=settings.symmetrize_conjugated_terminal_groups,
                                 on_mismatch="nan", progress=on_done)
        matrix_of = dict(zip(with_gens, matrices, strict=True))
        if on_done is not None and len(with_gens) < len(chunk):
            on_done(len(chunk) - len(with_gens))
        yield [molecule_result(name, *problems[i], matrix_of.get(i), settings)
               for i, name in enumerate(chunk)]


def _check_not_swapped(generated_path: Path, generated: dict, references: dict,
                       matched: dict) -> list[str]:
    """Refuse files that look swapped; return warnings for the doubtful cases."""
    refs_from_generate = written_by_generate(m for mols in references.values() for m in mols[:1])
    gens_from_generate = written_by_generate(m for mols in generated.values() for m in mols[:1])
    if refs_from_generate and not gens_from_generate:
        raise UserInputError(
            f"--generated {generated_path} was not written by `conformer generate` but the "
            "references were: the two files look swapped (COV-R and COV-P would trade places); "
            "give generate's output as --generated")
    if not (refs_from_generate and gens_from_generate):
        return []
    fewer = sum(len(matched[n]) < len(references[n]) for n in matched)
    if fewer * 2 > len(matched):
        return [f"both files were written by `conformer generate` and --generated has fewer "
                f"conformers than --references for {fewer} of {len(matched)} molecules: if the "
                "two are swapped, so are COV-R and COV-P"]
    return []


PLOT_FORMATS = ("svg", "png", "none")


def evaluate(generated_path: Path, references: dict[str, list[Chem.Mol]], out_dir: Path,
             settings: EvaluationSettings, workers: int = 1, progress: bool = True,
             extra_settings: dict | None = None, generated_key: str | None = None,
             plot: str = "svg") -> dict:
    """Evaluate and write ``results.json``, ``table.md``, ``rmsd.npz`` and the coverage plot.

    ``generated_key`` groups the generated records (None: detected, see
    :func:`detect_group_key`). ``plot``: ``"svg"`` writes ``coverage.svg`` (written directly,
    about a millisecond), ``"png"`` ``coverage.png`` with matplotlib (its import and drawing
    take about half a second, more than the rest of a small evaluation), ``"none"`` no plot.
    The returned document's ``warnings`` are lines for the user (incomplete molecules, name
    clashes, files that may be swapped).
    """
    if plot not in PLOT_FORMATS:
        raise UserInputError(f"--plot {plot!r}: expected one of {', '.join(PLOT_FORMATS)}")
    unreadable: list[dict] = []
    generated_path = Path(generated_path)
    references, ref_clashes = split_name_clashes(references)
    if _holds_no_record(generated_path):
        # the method produced nothing at all (e.g. every molecule failed): by the protocol each
        # molecule then scores coverage 0 and is listed, rather than the run being an error
        gen_key, generated, gen_clashes, matched, unmatched = generated_key or "name", {}, [], \
            {}, []
        warnings = [f"--generated {generated_path}: no conformer at all; every molecule scores "
                    "coverage 0 (listed in the failures)"]
    else:
        gen_key = generated_key or detect_group_key(generated_path, "--generated")
        generated = read_record_groups(generated_path, key=gen_key, errors=unreadable)
        if not generated:
            raise UserInputError(f"--generated {generated_path}: no readable conformer record")
        generated, gen_clashes = split_name_clashes(generated)
        matched, unmatched = match_generated(references, generated)
        if not matched:
            raise UserInputError(_no_match_message(generated_path, generated, references,
                                                   gen_key))
        warnings = _check_not_swapped(generated_path, generated, references, matched)
    incomplete = incomplete_molecules(matched)
    failures: list[dict] = unreadable + list(unmatched)
    for clash, side in [(c, "generated") for c in gen_clashes] + \
            [(c, "references") for c in ref_clashes]:
        failures.append(clash | {"file": side})
        warnings.append(f"{side}: {clash['reason']}: {clash['name']!r}")
    for name, (present, expected) in sorted(incomplete.items()):
        failures.append({"name": name, "reason": f"incomplete: {present} of {expected} generated "
                         "conformers in the file (cut short?); scored on those present"})
    if incomplete:
        name, (present, expected) = next(iter(sorted(incomplete.items())))
        warnings.append(f"{len(incomplete)} molecule(s) have fewer generated conformers than "
                        f"their records' n_conformers (file cut short?), e.g. {name!r}: "
                        f"{present} of {expected}; flagged 'incomplete' in results.json")
    names = sorted(references)
    skipped_no_refs = [n for n in names if not references[n]]
    for name in skipped_no_refs:
        failures.append({"name": name, "reason": "no reference conformer (excluded)"})
    names = [n for n in names if references[n]]
    if settings.only_generated:
        names = [n for n in names if n in matched]
    settings_dict = asdict(settings)
    out_dir = Path(out_dir)
    generated_sha256 = file_sha256(generated_path)
    cache = _MoleculeCache(out_dir / "per_molecule_cache", {
        "settings": settings_dict, "generated_sha256": generated_sha256,
        "references": records_digest(references, names)})
    results = [r for r in (cache.load(n) for n in names) if r is not None]
    todo = [n for n in names if not cache.has(n)]
    with show_progress(total=len(todo), desc="evaluate", unit="mol", enabled=progress) as bar:
        for chunk_results in compute_chunks(todo, references, matched, settings, workers,
                                            bar.update):
            cache.save(chunk_results)
            results.extend(chunk_results)
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
    table_metrics["n_incomplete"] = sum(r["name"] in incomplete for r in results)
    curves = M.coverage_curves(matrices)
    per_molecule = [s.as_dict() | {"n_gen_mismatched": r["n_gen_mismatched"],
                                   "incomplete": r["name"] in incomplete,
                                   "n_gen_expected": incomplete.get(r["name"], (0, None))[1]}
                    for s, r in zip(scores, results, strict=True)]
    document = {
        "metrics": table_metrics,
        "per_molecule": per_molecule,
        "failures": failures,
        "n_failures": len(failures),
        "warnings": warnings,
        "validity": summarize(validity_entries) | {"settings": settings.validity},
        "curves": curves,
        "settings": settings_dict | (extra_settings or {}) | {
            "generated": str(generated_path), "generated_key": gen_key,
            "generated_sha256": generated_sha256,
            "environment": _environment_info()},
    }
    (out_dir / "results.json").write_text(json.dumps(document, indent=2))
    # not compressed: RMSD values in float64 barely compress, and zlib took longer than the
    # rest of the output on the benchmark sets
    np.savez(out_dir / "rmsd.npz", **{f"m{i}": m for i, m in enumerate(matrices.values())},
             names=np.array(list(matrices)))
    (out_dir / "table.md").write_text(_table_markdown(document))
    if plot == "svg":
        write_coverage_svg(curves, out_dir / "coverage.svg", settings.threshold)
    elif plot == "png":
        plot_coverage(curves, out_dir / "coverage.png", settings.threshold)
    return document


# The code of this process cannot change once imported, so its revision (two git calls) and
# library versions are looked up once per process.
_environment_info = functools.cache(environment_info)


class _MoleculeCache:
    """Per-molecule results on disk, so an interrupted evaluation resumes (rerun the command).

    One NPZ per chunk of molecules computed together (arrays and a JSON string; no pickles)
    under ``folder``: a killed run loses at most the chunk in progress, and a small evaluation
    writes one file rather than one per molecule. The folder holds ``key.json`` (settings,
    generated-file hash, references hash) and is emptied when the key changes, so stale
    results are never mixed in.
    """

    def __init__(self, folder: Path, key: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_path = self.folder / "key.json"
        text = json.dumps(key, sort_keys=True, default=str)
        self._files: dict[str, tuple[Path, int]] = {}  # name -> (chunk file, position)
        if not key_path.exists() or key_path.read_text() != text:
            for old in self.folder.glob("*.npz"):
                old.unlink()
            key_path.write_text(text)
            return
        for path in sorted(self.folder.glob("chunk-*.npz")):
            if path.name.endswith(".tmp.npz"):
                continue
            with np.load(path, allow_pickle=False) as data:
                for position, name in enumerate(json.loads(str(data["names"]))):
                    self._files[name] = (path, position)

    def has(self, name: str) -> bool:
        return name in self._files

    def load(self, name: str) -> dict | None:
        if name not in self._files:
            return None
        path, position = self._files[name]
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))[position]
            shapes = data["shapes"]
            start = int(np.prod(shapes[:position], axis=1).sum())
            rows, cols = (int(n) for n in shapes[position])
            rmsd = data["values"][start:start + rows * cols].reshape(rows, cols)
            return meta | {"rmsd": rmsd}

    def save(self, results: list[dict]) -> None:
        """Store one chunk's results (one file, written atomically)."""
        if not results:
            return
        names = [r["name"] for r in results]
        path = self.folder / f"chunk-{stable_hash(names, 24)}.npz"
        partial = path.with_suffix(".tmp.npz")
        meta = [{k: v for k, v in r.items() if k != "rmsd"} for r in results]
        shapes = np.array([r["rmsd"].shape for r in results], dtype=np.int64).reshape(-1, 2)
        values = np.concatenate([r["rmsd"].ravel() for r in results])
        np.savez(partial, names=np.array(json.dumps(names)), meta=np.array(json.dumps(meta)),
                 shapes=shapes, values=values)  # few arrays: each costs a zip member
        partial.replace(path)  # atomic: a killed run never leaves half a file
        for position, name in enumerate(names):
            self._files[name] = (path, position)


def _table_markdown(document: dict) -> str:
    v = document["validity"]

    def fmt(x):
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [M.format_table(document["metrics"], "COV / MAT"),
             f"incomplete molecules (fewer generated conformers than announced, scored on "
             f"those present): {document['metrics'].get('n_incomplete', 0)}",
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


def write_coverage_svg(curves: dict, path: Path, threshold: float) -> None:
    """:func:`plot_coverage`'s figure as an SVG file written directly (no plotting library):
    COV-R and COV-P (mean solid, median dashed; %) against the threshold (Angstrom), the
    evaluation's threshold as a grey line."""
    width, height, left, right, top, bottom = 500, 350, 60, 20, 20, 50
    x = [float(v) for v in curves["threshold"]]
    x_max = max(x) if x and max(x) > 0 else 1.0
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(value: float) -> float:
        return left + plot_w * value / x_max

    def py(percent: float) -> float:
        return top + plot_h * (1 - percent / 100)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
             'stroke="black"/>']
    step = next(s for s in (0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0) if x_max / s <= 10)
    for i in range(int(x_max / step + 1e-9) + 1):
        tick = i * step
        parts.append(f'<line x1="{px(tick):.1f}" y1="{top + plot_h}" x2="{px(tick):.1f}" '
                     f'y2="{top + plot_h + 4}" stroke="black"/><text x="{px(tick):.1f}" '
                     f'y="{top + plot_h + 16}" text-anchor="middle">{tick:g}</text>')
    for percent in range(0, 101, 20):
        parts.append(f'<line x1="{left - 4}" y1="{py(percent):.1f}" x2="{left}" '
                     f'y2="{py(percent):.1f}" stroke="black"/><text x="{left - 7}" '
                     f'y="{py(percent) + 4:.1f}" text-anchor="end">{percent}</text>')
    parts.append(f'<line x1="{px(threshold):.1f}" y1="{top}" x2="{px(threshold):.1f}" '
                 f'y2="{top + plot_h}" stroke="grey" stroke-width="0.8"/>')
    colours = {"cov_r": "#1f77b4", "cov_p": "#ff7f0e"}
    legend_y = top + plot_h - 8
    for key in ("cov_p_median", "cov_p_mean", "cov_r_median", "cov_r_mean"):
        if not curves.get(key):
            continue
        colour, dash = colours[key[:5]], ' stroke-dasharray="5,3"' if "median" in key else ""
        points = " ".join(f"{px(a):.1f},{py(100 * float(b)):.1f}"
                          for a, b in zip(x, curves[key], strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5"{dash}/>')
        parts.append(f'<line x1="{width - right - 110}" y1="{legend_y - 4}" '
                     f'x2="{width - right - 85}" y2="{legend_y - 4}" stroke="{colour}" '
                     f'stroke-width="1.5"{dash}/><text x="{width - right - 80}" '
                     f'y="{legend_y}">{key.replace("_", " ")}</text>')
        legend_y -= 15
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
                 'threshold delta (A)</text>')
    parts.append(f'<text x="15" y="{top + plot_h / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 15 {top + plot_h / 2})">coverage (%)</text></svg>\n')
    Path(path).write_text("".join(parts))
