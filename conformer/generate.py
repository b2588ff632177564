"""SMILES in, SDF out: read, featurise, sample, check and correct stereo, write, account.

Every input line ends up either as conformers in the SDF (``input_line`` property) or as a row
of ``OUT.failures.csv`` (line, input, reason). Molecules are written as soon as they are done,
so an interrupted run resumes where it stopped: rerunning the same command skips the input
lines already in the SDF or in the failures file.

Randomness is per molecule: molecule on input line L draws from a generator seeded with
(seed, L), so a resumed run writes the same conformers as an uninterrupted one, whatever the
batch size.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem, RDLogger

from conformer.data import keys
from conformer.data.features import FeaturizationError, featurize_mol
from conformer.diffusion.guidance import GuidanceSettings, StereoGuidance, StereoTargets
from conformer.errors import UserInputError
from conformer.stereo import StereoChecker, StereoTally, correct_ensemble

METHODS = ("model", "etkdg", "etkdg-mmff")
DEFAULT_NUM_CONFS = 10  # when neither --num-confs nor an n_conformers column gives a count


@dataclass
class InputLine:
    """One molecule to generate. line_number counts from 1 over the file's lines (a CSV
    header is line 1). text is the line as given; smiles the one generated from."""

    line_number: int
    text: str
    smiles: str
    name: str
    input_smiles: str
    n_conformers: int | None = None


@dataclass
class GenerateOptions:
    """Settings of ``conformer generate`` (see the CLI help for each)."""

    method: str = "model"
    ckpt: str | None = None
    num_confs: int | None = None
    ratio: float = 2.0
    steps: int | None = None
    batch_size: int = 64
    device: str = "cpu"
    seed: int = 0
    hydrogens: bool = True
    workers: int = 1
    max_atoms: int = 400
    max_resamples: int = 3
    # model method: steer sampling towards the input's tetrahedral and E/Z stereo (see
    # conformer/diffusion/guidance.py); off gives the raw model's samples
    stereo_guidance: bool = True
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
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
        if self.steps is not None and self.steps < 1:
            raise UserInputError(f"--steps {self.steps}: must be at least 1")

    def conformer_count(self, line: InputLine) -> int:
        if self.num_confs is not None:
            return self.num_confs
        if line.n_conformers:
            return max(1, math.ceil(self.ratio * line.n_conformers))
        return DEFAULT_NUM_CONFS


@dataclass
class GenerateSummary:
    molecules: int = 0
    conformers: int = 0
    failures: int = 0
    skipped_done: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    stereo: StereoTally = field(default_factory=StereoTally)
    stereo_guidance: bool | None = None  # None: not a model run (no guidance to speak of)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "molecules": self.molecules, "conformers": self.conformers,
            "failures": self.failures, "skipped_already_done": self.skipped_done,
            "failure_reasons": dict(self.failure_reasons),
            "stereo_guidance": self.stereo_guidance,
            "stereo_conformers_checked": self.stereo.conformers,
            # as sampled (after guidance when it is on), before reflection/resampling
            "stereo_correct_before": self.stereo.rate_before(),
            "stereo_correct_after": self.stereo.rate_after(),
            "stereo_reflected": self.stereo.reflected, "stereo_resampled": self.stereo.resampled,
            "seconds": round(self.seconds, 3),
            "conformers_per_second": round(self.conformers / self.seconds, 3)
            if self.seconds else None,
        }

    def text(self) -> str:
        def pct(v):
            return "n/a (no stereo specified)" if v is None else f"{100 * v:.1f}%"

        reasons = ", ".join(f"{k}: {v}" for k, v in self.failure_reasons.most_common())
        sampled = {None: "", True: ", sampled with stereo guidance",
                   False: ", sampled without stereo guidance"}[self.stereo_guidance]
        lines = [
            f"molecules:   {self.molecules}" + (f" (+{self.skipped_done} done earlier)"
                                                 if self.skipped_done else ""),
            f"conformers:  {self.conformers}",
            f"failures:    {self.failures}" + (f" ({reasons})" if reasons else ""),
            f"stereo-correct before correction: {pct(self.stereo.rate_before())} "
            f"of {self.stereo.conformers} conformers with specified stereo{sampled}",
            f"stereo-correct after correction:  {pct(self.stereo.rate_after())} "
            f"({self.stereo.reflected} reflected, {self.stereo.resampled} resampled)",
            f"time:        {self.seconds:.1f} s"
            + (f" ({self.conformers / self.seconds:.2f} conformers/s)" if self.seconds else ""),
        ]
        return "\n".join(lines)


# -- input ---------------------------------------------------------------------------------
def read_inputs(path: str | Path) -> Iterator[InputLine]:
    """Molecules of a ``.smi``/``.txt`` (SMILES, optional name; whitespace separated; ``#``
    comments and blank lines skipped) or ``.csv`` file (``smiles`` column; optional ``name``,
    ``n_conformers``, ``corrected_smiles`` — generated from when present and non-empty)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"input {path}: no such file")
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path)
    else:
        yield from _read_smi(path)


def _read_smi(path: Path) -> Iterator[InputLine]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            stripped = text.strip()
            if not stripped or stripped.startswith("#"):
                continue
            parts = stripped.split(None, 1)
            smiles = parts[0]
            name = parts[1].strip() if len(parts) > 1 else f"line{number}"
            yield InputLine(number, text, smiles, name, smiles)


def _read_csv(path: Path) -> Iterator[InputLine]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "smiles" not in fields:
            raise UserInputError(f"input {path}: CSV has no 'smiles' column "
                                 f"(columns: {', '.join(fields) or 'none'})")
        reader.fieldnames = fields
        for index, row in enumerate(reader):
            number = index + 2  # line 1 is the header (multi-line fields are not expected)
            text = ",".join(str(row.get(f) or "") for f in fields)
            smiles = (row.get("smiles") or "").strip()
            corrected = (row.get("corrected_smiles") or "").strip()
            name = (row.get("name") or "").strip() or f"line{number}"
            count_text = (row.get("n_conformers") or "").strip()
            try:
                count = int(float(count_text)) if count_text else None
            except ValueError:
                count = -1  # reported as a failure of this line, not of the file
            yield InputLine(number, text, corrected or smiles, name, smiles, count)


class MoleculeError(ValueError):
    """This input line cannot be processed (the message is the reason)."""


def prepare_molecule(line: InputLine, max_atoms: int) -> Chem.Mol:
    """The RDKit molecule with explicit hydrogens, or MoleculeError with the reason."""
    if line.n_conformers is not None and line.n_conformers < 0:
        raise MoleculeError("n_conformers is not a non-negative integer")
    if not line.smiles:
        raise MoleculeError("empty SMILES")
    mol = Chem.MolFromSmiles(line.smiles)
    if mol is None:
        raise MoleculeError("invalid SMILES (RDKit cannot parse it)")
    if len(Chem.GetMolFrags(mol)) > 1:
        raise MoleculeError("disconnected fragments are not supported (strip salts/solvents)")
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > max_atoms:
        raise MoleculeError(f"too many atoms ({mol.GetNumAtoms()} with hydrogens; "
                            f"limit {max_atoms})")
    if mol.GetNumAtoms() < 2:
        raise MoleculeError("a single atom has no conformation")
    return mol


# -- samplers ------------------------------------------------------------------------------
class ModelSampler:
    """Conformers from a diffusion model: ``sample(mol, count, generator) -> [count, N, 3]``."""

    def __init__(self, ckpt: str | None, device: str, steps: int | None, batch_size: int):
        from conformer.train.export import load_model

        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise UserInputError(f"--device {device}: {error}") from error
        self.net, self.diffusion, self.meta = load_model(ckpt, self.device)
        self.steps = steps
        self.batch_size = batch_size

    def featurize(self, mol: Chem.Mol) -> dict:
        try:
            return featurize_mol(mol)
        except FeaturizationError as error:
            raise MoleculeError(str(error)) from error

    def _batch(self, features: dict, copies: int) -> dict:
        n = features[keys.ATOMIC_NUMBERS].shape[0]
        e = features[keys.BOND_INDEX].shape[1]
        offsets = (torch.arange(copies) * n).repeat_interleave(e)
        bond_index = torch.from_numpy(features[keys.BOND_INDEX]).repeat(1, copies) + offsets
        batch = {
            keys.ATOM_FEATURES: torch.from_numpy(features[keys.ATOM_FEATURES]).repeat(copies, 1),
            keys.ATOMIC_NUMBERS: torch.from_numpy(features[keys.ATOMIC_NUMBERS]).repeat(copies),
            keys.BOND_INDEX: bond_index,
            keys.BOND_FEATURES: torch.from_numpy(features[keys.BOND_FEATURES]).repeat(copies, 1),
            keys.BATCH: torch.arange(copies).repeat_interleave(n),
            keys.NUM_GRAPHS: copies,
        }
        batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        batch[keys.POS] = torch.zeros(n * copies, 3, device=self.device)
        return batch

    def sample(self, features: dict, count: int, generator: torch.Generator,
               targets: StereoTargets | None = None,
               guidance: GuidanceSettings | None = None) -> np.ndarray:
        """[count, N, 3] Angstrom, centred. With ``targets`` (the molecule's stereo, see
        ``StereoChecker.targets``) the sampler is guided towards it."""
        n = features[keys.ATOMIC_NUMBERS].shape[0]
        per_batch = max(1, self.batch_size)
        settings = self.diffusion.settings
        stochastic = settings.churn > 0 or settings.refine_steps > 0
        out = []
        for start in range(0, count, per_batch):
            copies = min(per_batch, count - start)
            batch = self._batch(features, copies)
            starts, noise_generators = [], [] if stochastic else None
            for _ in range(copies):  # in conformer order, so batch size changes nothing
                starts.append(torch.randn(n, 3, generator=generator))
                if stochastic:  # the stochastic sampler's own stream for this conformer
                    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
                    noise_generators.append(torch.Generator().manual_seed(seed))
            x_init = torch.cat(starts)
            steer = None
            if targets is not None and not targets.empty:
                steer = StereoGuidance(targets.tile(copies, n), guidance, device=self.device)
            x = self.diffusion.sample(self.net, batch, steps=self.steps, x_init=x_init,
                                      noise_generators=noise_generators, guidance=steer)
            out.append(x.detach().cpu().double().numpy().reshape(copies, n, 3))
        return np.concatenate(out)


def _rdkit_conformers(mol: Chem.Mol, count: int, method: str, seed: int) -> np.ndarray:
    from conformer.baselines import generate_rdkit

    embedded = generate_rdkit(mol, count, method, seed)
    ids = [c.GetId() for c in embedded.GetConformers()]
    if not ids:
        raise MoleculeError(f"{method} could not embed the molecule")
    positions = np.stack([embedded.GetConformer(i).GetPositions() for i in ids])
    return positions - positions.mean(axis=1, keepdims=True)


def _molecule_seed(seed: int, line_number: int) -> int:
    return (seed * 1_000_003 + line_number * 7_919 + 17) % (2 ** 31 - 1) or 1


def _rdkit_task(task):
    line, count, method, seed, max_atoms = task
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = prepare_molecule(line, max_atoms)
        positions = _rdkit_conformers(mol, count, method, _molecule_seed(seed, line.line_number))
        return line, positions, None
    except MoleculeError as error:
        return line, None, str(error)
    except Exception as error:  # an RDKit failure on one molecule must not stop the file
        return line, None, f"{method} failed: {error}"


# -- output --------------------------------------------------------------------------------
def failures_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


def _failed_lines(path: Path) -> set[int]:
    if not path.exists():
        return set()
    with open(path, newline="") as handle:
        return {int(row["line"]) for row in csv.DictReader(handle) if row.get("line")}


class _FailureLog:
    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self.handle = open(path, "a", newline="")
        self.writer = csv.writer(self.handle)
        if new:
            self.writer.writerow(["line", "input", "reason"])
            self.handle.flush()

    def write(self, line: InputLine, reason: str) -> None:
        self.writer.writerow([line.line_number, line.text, reason])
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _ensemble_mol(mol: Chem.Mol, positions: np.ndarray, hydrogens: bool) -> Chem.Mol:
    """``mol`` carrying ``positions`` [C, N, 3] as conformers 0..C-1 (hydrogens removed unless
    ``hydrogens``)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for xyz in positions:
        conformer = Chem.Conformer(out.GetNumAtoms())
        conformer.SetPositions(np.asarray(xyz, dtype=np.float64))
        out.AddConformer(conformer, assignId=True)
    return out if hydrogens else Chem.RemoveHs(out)


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, unit="mol", desc="generate", disable=disable)


def generate_file(input_path: str | Path, out: str | Path,
                  options: GenerateOptions | None = None) -> GenerateSummary:
    """Generate conformers for every molecule of ``input_path`` into the SDF ``out``."""
    from conformer import sdf_io

    options = options or GenerateOptions()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = list(read_inputs(input_path))
    done = set(sdf_io.completed_input_lines(out)) if out.exists() else set()
    fail_path = failures_path(out)
    done |= _failed_lines(fail_path)
    todo = [line for line in lines if line.line_number not in done]
    summary = GenerateSummary(skipped_done=len(lines) - len(todo))
    RDLogger.DisableLog("rdApp.*")
    start = time.perf_counter()
    failures = _FailureLog(fail_path)
    writer = sdf_io.ConformerSDFWriter(out, append=True)
    bar = _progress(len(todo), options.progress)
    try:
        if options.method == "model":
            _run_model(todo, options, writer, failures, summary, bar)
        else:
            _run_rdkit(todo, options, writer, failures, summary, bar)
    finally:
        bar.close()
        writer.close()
        failures.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _fail(line, reason, failures, summary) -> None:
    failures.write(line, reason)
    summary.failures += 1
    summary.failure_reasons[reason.split(" (")[0]] += 1


def _finish(mol, positions, line, options, writer, summary, resample, checker=None) -> None:
    checker = checker or StereoChecker(mol)
    result = correct_ensemble(checker, positions, resample, options.max_resamples)
    summary.stereo.add(result.tally)
    extra = {"method": options.method}
    if options.method == "model":
        extra["stereo_guidance"] = "on" if options.stereo_guidance else "off"
    if line.input_smiles != line.smiles:
        extra["input_smiles"] = line.input_smiles
    if checker.has_stereo:
        # conformers that still miss the input's stereo after correction (empty: none)
        extra["stereo_wrong_conformers"] = ",".join(
            str(i) for i in np.flatnonzero(~result.correct_after))
    written = writer.write_molecule(_ensemble_mol(mol, result.positions, options.hydrogens),
                                    line.name, line.smiles, line.line_number, extra)
    summary.molecules += 1
    summary.conformers += written


def _run_model(todo, options, writer, failures, summary, bar) -> None:
    if options.workers and options.workers > 0:
        torch.set_num_threads(options.workers)
    sampler = ModelSampler(options.ckpt, options.device, options.steps, options.batch_size)
    summary.stereo_guidance = options.stereo_guidance
    for line in todo:
        try:
            mol = prepare_molecule(line, options.max_atoms)
            features = sampler.featurize(mol)
        except MoleculeError as error:
            _fail(line, str(error), failures, summary)
            bar.update(1)
            continue
        generator = torch.Generator().manual_seed(_molecule_seed(options.seed, line.line_number))
        count = options.conformer_count(line)
        checker = StereoChecker(mol)
        targets = checker.targets() if options.stereo_guidance else None
        positions = sampler.sample(features, count, generator, targets, options.guidance)

        def resample(k, features=features, generator=generator, targets=targets):
            return sampler.sample(features, k, generator, targets, options.guidance)

        _finish(mol, positions, line, options, writer, summary, resample, checker)
        bar.update(1)


def _run_rdkit(todo, options, writer, failures, summary, bar) -> None:
    tasks = [(line, options.conformer_count(line), options.method, options.seed,
              options.max_atoms) for line in todo]
    if options.workers and options.workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(options.workers)
        results = pool.imap(_rdkit_task, tasks)
    else:
        pool, results = None, map(_rdkit_task, tasks)
    try:
        for line, positions, error in results:
            if error is not None:
                _fail(line, error, failures, summary)
            else:
                mol = prepare_molecule(line, options.max_atoms)  # same atom order as the worker
                # ETKDG enforces stereo; the check still runs so the rates are measured, and
                # no resampling is needed beyond the reflection rule
                _finish(mol, positions, line, options, writer, summary, None)
            bar.update(1)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
