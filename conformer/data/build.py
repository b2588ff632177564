"""Build a GEOM-layout ``rdkit_folder`` from SMILES with RDKit (the offline training data).

Per molecule: ETKDGv3 embedding (non-zero seed derived from the run seed and the SMILES, so the
result does not depend on file order or worker count), MMFF94 minimisation, an energy window
above the lowest minimum, greedy heavy-atom RMSD de-duplication in order of energy, and
Boltzmann weights at 298.15 K from the MMFF energies. Optionally GFN2-xTB refinement with
``tblite`` (geometry relaxation; energies then come from GFN2-xTB).

A molecule's key (``canonical_key``: canonical SMILES with unassigned stereo fixed) costs a
trial embedding, tens of milliseconds; keys are computed by the worker processes and kept in
``DIR/canonical_keys.tsv`` (SMILES text, key or failure), so a resumed build reads them instead
of computing every key again, and gets the same keys even where the embedding test's time limit
decided the first time. The file is ignored when the run seed, the key rules or RDKit's
version differ from the ones it was written with.

Energies: ``totalenergy`` in Hartree (MMFF kcal/mol divided by 627.509474 when xTB is off, so
its absolute value is not a quantum energy), ``relativeenergy`` in kcal/mol.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import math
import random
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import rdDistGeom, rdForceFieldHelpers, rdMolAlign
from rdkit.Chem.EnumerateStereoisomers import EnumerateStereoisomers, StereoEnumerationOptions

from conformer.cli_settings import option
from conformer.data import geom
from conformer.errors import UserInputError
from conformer.parallel import parallel_map
from conformer.progress import progress as show_progress

# geom_id = line_number * GEOM_ID_STRIDE + conformer index: unique, deterministic, resumable.
GEOM_ID_STRIDE = 10_000
STEREO_CHECK_SECONDS = 2

DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test of split.npy


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """Settings of one build; all of them are recorded in ``DIR/build_settings.json``."""

    # Each field with help is also a `conformer build-geom` option with this default and help.
    n_confs: int = option(30, flag="--confs", metavar="N",
                          help="ETKDGv3 embeddings per molecule before the energy window and "
                               "de-duplication")
    seed: int = option(1, help="run seed; per-molecule non-zero ETKDG seeds and the split "
                               "derive from it")
    # CREST's default window
    energy_window: float = option(6.0, help="keep conformers within this many kcal/mol of the "
                                            "lowest")
    # symmetry-aware heavy-atom RMSD
    rmsd_threshold: float = option(0.5, help="heavy-atom RMSD in Angstrom below which two "
                                             "conformers are duplicates")
    xtb: bool = option(False, help="refine geometries and energies with GFN2-xTB (needs "
                                   "tblite)")
    name: str = option("drugs", help="dataset name: writes summary_<name>.json and <name>/")
    mmff_max_iters: int = 2000
    embed_timeout_s: int = 120   # ETKDG wall-clock cap per molecule: one pathological molecule
                                 # must not stall a build (only such molecules can hit it)

    def __post_init__(self):
        if self.n_confs < 1 or self.n_confs >= GEOM_ID_STRIDE:
            raise UserInputError(f"--confs {self.n_confs}: must be in 1..{GEOM_ID_STRIDE - 1}")
        if self.energy_window <= 0:
            raise UserInputError(f"--energy-window {self.energy_window}: must be > 0 kcal/mol")
        if self.rmsd_threshold < 0:
            raise UserInputError(f"--rmsd-threshold {self.rmsd_threshold}: must be >= 0 A")
        if not self.name or "/" in self.name:
            raise UserInputError(f"--name {self.name!r}: must be a plain folder name")


class MoleculeBuildError(ValueError):
    """A molecule that cannot be built (the message is the reason written to failures.csv)."""


@dataclasses.dataclass
class SmilesLine:
    line_number: int  # 1-based line in the input file
    smiles: str       # as written in the file
    name: str | None


def read_smiles_file(path: Path) -> list[SmilesLine]:
    """Lines ``SMILES [name]``; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no such SMILES file")
    entries = []
    with open(path) as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            entries.append(SmilesLine(number, parts[0], parts[1] if len(parts) > 1 else None))
    return entries


def molecule_seed(run_seed: int, key: str) -> int:
    """A non-zero ETKDG seed for one molecule (RDKit treats 0 specially: identical conformers)."""
    digest = hashlib.sha256(f"{run_seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % (2**31 - 2) + 1


def canonical_key(smiles: str, run_seed: int = 1) -> str:
    """The GEOM key of a molecule built here: RDKit canonical isomeric SMILES, no explicit H.

    Unassigned stereocentres and stereo double bonds are fixed to one stereoisomer, drawn with
    a seed derived from ``run_seed`` and the SMILES: ETKDG would otherwise give each conformer
    a random configuration, and a record's conformers must share the stereo its graph states
    (as CREST keeps the stereo of its input in GEOM).
    """
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise MoleculeBuildError("RDKit cannot parse the SMILES")
    plain = Chem.MolToSmiles(mol)
    mol = Chem.MolFromSmiles(plain)  # canonical atom order: the isomer drawn is order-free
    seed = molecule_seed(run_seed, plain)
    options = StereoEnumerationOptions(onlyUnassigned=True, unique=True, maxIsomers=1,
                                       rand=random.Random(seed))
    isomer = next(iter(EnumerateStereoisomers(mol, options=options)), mol)
    if _embeds_quickly(isomer, seed):
        return Chem.MolToSmiles(isomer)
    # The draw can be geometrically impossible (e.g. the bridgeheads of a bornane); then take
    # the first embeddable isomer of a seeded shuffle of (at most 64 of) the others.
    everything = StereoEnumerationOptions(onlyUnassigned=True, unique=True)
    candidates = list(itertools.islice(EnumerateStereoisomers(mol, options=everything), 64))
    random.Random(seed).shuffle(candidates)
    for candidate in candidates:
        if _embeds_quickly(candidate, seed):
            return Chem.MolToSmiles(candidate)
    raise MoleculeBuildError("no stereoisomer of the SMILES could be embedded by ETKDGv3")


KEYS_FILE = "canonical_keys.tsv"
# Bump when canonical_key's rules change: key files written under other rules are then ignored.
KEYS_FORMAT = 1


def _keys_header(run_seed: int) -> str:
    from rdkit import rdBase

    return (f"# conformer build-geom canonical keys\tformat={KEYS_FORMAT}\tseed={run_seed}"
            f"\trdkit={rdBase.rdkitVersion}")


def _key_task(item: tuple[str, int]) -> tuple[str, str | None, str | None]:
    """(SMILES, key, None) or (SMILES, None, reason); one line of the keys file."""
    smiles, run_seed = item
    try:
        return smiles, canonical_key(smiles, run_seed), None
    except MoleculeBuildError as error:
        return smiles, None, " ".join(str(error).split())  # one line, no tabs


def _read_keys_file(path: Path, header: str) -> dict[str, tuple[str | None, str | None]]:
    known: dict[str, tuple[str | None, str | None]] = {}
    if not path.is_file():
        return known
    with open(path) as handle:
        if handle.readline().rstrip("\n") != header:
            return {}  # another run seed, key rules or RDKit: every key is computed again
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if not line.endswith("\n") or len(parts) != 3 or not (parts[1] or parts[2]):
                continue  # a line cut by an interrupted run: that key is computed again
            known[parts[0]] = (parts[1] or None, parts[2] or None)
    return known


def canonical_keys(smiles: list[str], run_seed: int, path: Path, workers: int = 1,
                   progress: bool = True) -> dict[str, tuple[str | None, str | None]]:
    """``canonical_key`` of every distinct SMILES text, as ``{smiles: (key, None)}`` or
    ``{smiles: (None, reason)}``, read from the keys file ``path`` where it has them (written
    with the same run seed, key rules and RDKit) and computed by ``workers`` processes
    otherwise; each new key is appended to ``path`` as it arrives, so an interrupted run keeps
    what it computed."""
    header = _keys_header(run_seed)
    known = _read_keys_file(path, header)
    missing = [text for text in dict.fromkeys(smiles) if text not in known]
    if not missing:
        return known
    if not known:
        path.write_text(header + "\n")
    bar = show_progress(total=len(missing), desc="canonical SMILES", unit="mol",
                        enabled=progress)
    serial = workers <= 1 or len(missing) < 2 * workers  # spawning workers costs seconds
    items = [(text, run_seed) for text in missing]
    try:
        with open(path, "a") as handle, \
                closing(parallel_map(_key_task, items, 1 if serial else workers,
                                     ordered=False, chunksize=8)) as results:
            for text, key, reason in results:
                known[text] = (key, reason)
                handle.write(f"{text}\t{key or ''}\t{reason or ''}\n")
                handle.flush()
                bar.update(1)
    finally:
        bar.close()
    return known


def _embeds_quickly(isomer: Chem.Mol, seed: int) -> bool:
    """Whether ETKDGv3 embeds ``isomer`` within ``STEREO_CHECK_SECONDS``: a possible stereo
    configuration embeds in milliseconds, an impossible one takes seconds or fails."""
    if not any(a.GetChiralTag() != Chem.ChiralType.CHI_UNSPECIFIED for a in isomer.GetAtoms()):
        return True  # double-bond stereo alone is always realisable
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = seed
    params.timeout = STEREO_CHECK_SECONDS
    start = time.perf_counter()
    ok = rdDistGeom.EmbedMolecule(Chem.AddHs(isomer), params) == 0
    return ok and time.perf_counter() - start < STEREO_CHECK_SECONDS


def boltzmann_weights(relative_kcal: np.ndarray, temperature: float = geom.GEOM_TEMPERATURE_K
                      ) -> np.ndarray:
    """p_i proportional to exp(-E_i / RT), E_i relative energies in kcal/mol; shape [C]."""
    scaled = -np.asarray(relative_kcal, dtype=np.float64) / (geom.GAS_CONSTANT_KCAL * temperature)
    scaled -= scaled.max()
    weights = np.exp(scaled)
    return weights / weights.sum()


def _xtb_relax(mol: Chem.Mol, conf_id: int, charge: int) -> float:
    """Relax one conformer in place with GFN2-xTB (tblite); returns the energy in Hartree."""
    from scipy.optimize import minimize
    from tblite.interface import Calculator

    bohr = 1.8897261246
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    start = mol.GetConformer(conf_id).GetPositions() * bohr

    def energy_and_gradient(flat):
        calc = Calculator("GFN2-xTB", numbers, flat.reshape(-1, 3), charge=charge)
        calc.set("verbosity", 0)
        result = calc.singlepoint()
        return result.get("energy"), result.get("gradient").ravel()

    fit = minimize(energy_and_gradient, start.ravel(), jac=True, method="L-BFGS-B",
                   options={"maxiter": 300, "gtol": 1e-4})
    conf = mol.GetConformer(conf_id)
    for i, xyz in enumerate(fit.x.reshape(-1, 3) / bohr):
        conf.SetAtomPosition(i, xyz.tolist())
    return float(fit.fun)


def require_xtb() -> None:
    try:
        import tblite.interface  # noqa: F401
    except ImportError as error:
        raise UserInputError(
            "--xtb: GFN2-xTB refinement needs the 'tblite' package, which is not importable "
            f"({error}); install it (pip install 'conformer[xtb]') or drop --xtb") from None


def _deduplicate(mol: Chem.Mol, order: list[int], threshold: float) -> list[int]:
    """Greedy de-duplication: keep a conformer unless its heavy-atom best RMSD to one already
    kept is below ``threshold``. ``order`` lists conformer ids, lowest energy first."""
    heavy = Chem.RemoveHs(mol)
    kept: list[int] = []
    for conf_id in order:
        duplicate = False
        for ref_id in kept:
            probe = Chem.Mol(heavy)  # GetBestRMS moves the probe; keep ``heavy`` untouched
            if rdMolAlign.GetBestRMS(probe, heavy, prbId=conf_id, refId=ref_id) < threshold:
                duplicate = True
                break
        if not duplicate:
            kept.append(conf_id)
    return kept


def _conformers_with_key_stereo(mol: Chem.Mol, conf_ids: list[int], key: str) -> list[int]:
    """The conformers that carry the stereochemistry the SMILES ``key`` specifies.

    Checked as ``conformer generate`` checks its output (:class:`conformer.stereo.StereoChecker`):
    each tetrahedral centre's tag and each E/Z bond's dihedral the SMILES sets. Not by
    comparing the SMILES perceived from 3D with ``key``: 3D perception also labels double bonds
    the SMILES leaves open, such as the E/Z of an imine's N-H (``N=c1[nH]cc(...)s1`` comes
    back as ``[H]/N=c1/...``), which no conformer can then match. ``mol`` is ``key`` with
    explicit hydrogens, in the same atom order.
    """
    from conformer.stereo import StereoChecker

    checker = StereoChecker(mol)
    if not checker.has_stereo:
        return list(conf_ids)
    return [cid for cid in conf_ids
            if checker.check(mol.GetConformer(cid).GetPositions()).correct]


def build_molecule(key: str, line_number: int, settings: BuildSettings) -> dict:
    """The GEOM molecule dict for canonical SMILES ``key`` (summary keys + smiles + conformers).

    Raises MoleculeBuildError with the reason when it cannot be embedded or parameterised.
    """
    mol = Chem.MolFromSmiles(key)
    if mol is None:
        raise MoleculeBuildError("RDKit cannot parse the SMILES")
    mol = Chem.AddHs(mol)
    params = rdDistGeom.ETKDGv3()
    params.randomSeed = molecule_seed(settings.seed, key)
    params.numThreads = 1
    params.pruneRmsThresh = -1.0  # de-duplication happens after minimisation, not before
    params.timeout = settings.embed_timeout_s
    conf_ids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=settings.n_confs, params=params))
    if not conf_ids:
        params.useRandomCoords = True  # ETKDG's documented fallback for hard ring systems
        conf_ids = list(rdDistGeom.EmbedMultipleConfs(mol, numConfs=settings.n_confs,
                                                      params=params))
    if not conf_ids:
        raise MoleculeBuildError("ETKDGv3 could not embed any conformer")
    if not rdForceFieldHelpers.MMFFHasAllMoleculeParams(mol):
        raise MoleculeBuildError("MMFF94 has no parameters for this molecule")
    results = rdForceFieldHelpers.MMFFOptimizeMoleculeConfs(
        mol, numThreads=1, maxIters=settings.mmff_max_iters)
    energies_kcal = np.array([energy for _, energy in results], dtype=np.float64)
    same_stereo = _conformers_with_key_stereo(mol, conf_ids, key)
    if not same_stereo:
        raise MoleculeBuildError("no embedded conformer has the stereochemistry of the SMILES")
    energies_kcal = energies_kcal[[conf_ids.index(cid) for cid in same_stereo]]
    conf_ids = same_stereo
    charge = Chem.GetFormalCharge(mol)
    if settings.xtb:
        energies_kcal = np.array([_xtb_relax(mol, cid, charge) for cid in conf_ids]
                                 ) * geom.HARTREE_TO_KCAL_PER_MOL
    if not np.all(np.isfinite(energies_kcal)):
        raise MoleculeBuildError("non-finite force-field energy")
    lowest = energies_kcal.min()
    in_window = [i for i in np.argsort(energies_kcal, kind="stable")
                 if energies_kcal[i] - lowest <= settings.energy_window]
    kept = _deduplicate(mol, [conf_ids[i] for i in in_window], settings.rmsd_threshold)
    index_of = {cid: i for i, cid in enumerate(conf_ids)}
    kept_energies = np.array([energies_kcal[index_of[cid]] for cid in kept])
    relative = kept_energies - lowest
    weights = boltzmann_weights(relative)
    entropy = -geom.GAS_CONSTANT_KCAL * 1000.0 * float(np.sum(weights * np.log(weights)))
    conformers = []
    for rank, (cid, rel, weight, energy) in enumerate(zip(kept, relative, weights,
                                                          kept_energies, strict=True)):
        single = Chem.Mol(mol, confId=cid)  # copies only conformer ``cid``
        single.GetConformer().SetId(0)
        conformers.append({
            "geom_id": line_number * GEOM_ID_STRIDE + rank,
            "set": 1,
            "degeneracy": 1,  # distinct minima only; ETKDG sampling frequency is not degeneracy
            "totalenergy": float(energy / geom.HARTREE_TO_KCAL_PER_MOL),
            "relativeenergy": float(rel),
            "boltzmannweight": float(weight),
            "conformerweights": [float(weight)],
            "rd_mol": single,
        })
    return {
        "smiles": key,
        "charge": int(charge),
        "datasets": ["conformer-build-" + ("gfn2" if settings.xtb else "mmff94")],
        "ensembleenergy": float(np.sum(weights * relative)),
        "ensembleentropy": entropy,  # cal/(mol K), as in GEOM
        "ensemblefreeenergy": -geom.GEOM_TEMPERATURE_K * entropy / 1000.0,  # kcal/mol
        "lowestenergy": float(lowest / geom.HARTREE_TO_KCAL_PER_MOL),
        "poplowestpct": float(100.0 * weights.max()),
        "temperature": geom.GEOM_TEMPERATURE_K,
        "totalconfs": len(conf_ids),  # embedded with the right stereo, before window/de-dup
        "uniqueconfs": len(kept),
        "conformers": conformers,
    }


def summary_entry(molecule: dict, name: str) -> dict:
    """The ``summary_<name>.json`` entry of a molecule dict (everything but the conformers)."""
    entry = {k: v for k, v in molecule.items() if k not in ("conformers", "smiles")}
    entry["pickle_path"] = geom.pickle_relpath(molecule["smiles"], name)
    return entry


def _build_task(task: tuple[int, str, str, str, BuildSettings]) -> tuple[int, str, str | None]:
    """Worker: build one molecule and write its pickle. Returns (line, key, failure reason)."""
    line_number, key, out_dir, _, settings = task
    RDLogger.DisableLog("rdApp.*")
    try:
        molecule = build_molecule(key, line_number, settings)
    except MoleculeBuildError as error:
        return line_number, key, str(error)
    except Exception as error:  # an RDKit failure on one molecule must not stop the others
        return line_number, key, f"{type(error).__name__}: {error}"
    path = Path(out_dir) / geom.pickle_relpath(key, settings.name)
    geom.write_molecule_pickle(path, molecule)
    return line_number, key, None


def write_split(out_dir: Path, name: str, fractions: tuple[float, float, float], seed: int
                ) -> np.ndarray:
    """Write ``out_dir/split.npy`` in GEOM's format over the sorted pickles; returns it."""
    n = len(geom.sorted_pickle_paths(out_dir, name))
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    split = np.empty(3, dtype=object)
    split[0] = np.sort(order[:n_train]).astype(np.int64)
    split[1] = np.sort(order[n_train:n_train + n_val]).astype(np.int64)
    split[2] = np.sort(order[n_train + n_val:]).astype(np.int64)
    np.save(Path(out_dir) / "split.npy", split, allow_pickle=True)
    return split


@dataclasses.dataclass
class BuildReport:
    built: int
    skipped_existing: int
    failed: int
    molecules_in_folder: int


def build_geom_folder(smiles_file: Path, out_dir: Path, settings: BuildSettings,
                      workers: int = 1,
                      split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
                      progress: bool = True) -> BuildReport:
    """Build (or resume) ``out_dir`` from ``smiles_file``; see the module docstring.

    Molecules whose pickle already exists are skipped. Failures (unparsable SMILES, embedding or
    force-field failures, duplicates) go to ``out_dir/failures.csv`` with their line number.
    """
    if settings.xtb:
        require_xtb()
    if len(split_fractions) != 3 or min(split_fractions) < 0 or \
            not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6):
        raise UserInputError(f"--split-fractions {split_fractions}: need 3 non-negative "
                             "fractions summing to 1")
    if workers < 1:
        raise UserInputError(f"--workers {workers}: must be >= 1")
    out_dir = Path(out_dir)
    entries = read_smiles_file(smiles_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / settings.name).mkdir(exist_ok=True)
    geom.atomic_write_json(out_dir / "build_settings.json", {
        "settings": dataclasses.asdict(settings), "input": str(smiles_file),
        "split_fractions": list(split_fractions)})

    failures: list[tuple[int, str, str]] = []
    first_line_of: dict[str, int] = {}
    tasks, done_keys = [], []
    keys = canonical_keys([entry.smiles for entry in entries], settings.seed,
                          out_dir / KEYS_FILE, workers, progress)
    for entry in entries:
        key, reason = keys[entry.smiles]
        if key is None:
            failures.append((entry.line_number, entry.smiles, reason))
            continue
        if key in first_line_of:
            failures.append((entry.line_number, entry.smiles,
                             f"duplicate of line {first_line_of[key]}"))
            continue
        first_line_of[key] = entry.line_number
        if (out_dir / geom.pickle_relpath(key, settings.name)).exists():
            done_keys.append(key)
        else:
            tasks.append((entry.line_number, key, str(out_dir), entry.smiles, settings))

    input_of = {t[1]: t[3] for t in tasks}
    built = 0
    bar = show_progress(total=len(tasks), desc="build-geom", unit="mol", enabled=progress)
    try:
        with closing(parallel_map(_build_task, tasks, workers, ordered=False,
                                  chunksize=1)) as results:
            for line_number, key, reason in results:
                if reason is None:
                    built += 1
                else:
                    failures.append((line_number, input_of[key], reason))
                bar.update(1)
    finally:
        bar.close()

    expected = {geom.pickle_relpath(key, settings.name).split("/", 1)[1] for key in first_line_of}
    stray = [p.name for p in geom.sorted_pickle_paths(out_dir, settings.name)
             if p.name not in expected]
    if stray:  # kept (they may be the user's), but they are in split.npy and not in the summary
        print(f"build-geom: warning: {len(stray)} pickle(s) in {out_dir / settings.name} do not "
              f"come from {smiles_file}, e.g. {stray[0]}", file=sys.stderr)
    summary = {}
    for key in sorted(first_line_of):
        path = out_dir / geom.pickle_relpath(key, settings.name)
        if path.exists():
            summary[key] = summary_entry(geom.read_molecule_pickle(path), settings.name)
    geom.atomic_write_json(out_dir / f"summary_{settings.name}.json", summary)
    failures.sort()
    with open(out_dir / "failures.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["line", "input", "reason"])
        writer.writerows(failures)
    write_split(out_dir, settings.name, split_fractions, settings.seed)
    return BuildReport(built=built, skipped_existing=len(done_keys), failed=len(failures),
                       molecules_in_folder=len(geom.sorted_pickle_paths(out_dir, settings.name)))
