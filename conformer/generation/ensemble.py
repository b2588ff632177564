"""One molecule from input to a checked conformer ensemble: the core that ``conformer
generate`` (writing an SDF) and ``conformer.generate`` (returning Mols) both loop over.

Per molecule: prepare (explicit hydrogens), sample (model or ETKDG), check the input's stereo
and correct it (``conformer.stereo.correct_ensemble``: reflection, resampling), and attach
the conformers to a copy of the molecule with the SDF writer's properties. A molecule that
cannot be generated comes back with its reason instead: nothing is dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np
import torch
from rdkit import Chem, RDLogger
from rdkit.rdBase import BlockLogs

from conformer.errors import UserInputError
from conformer.generation.domain import check_domain, implausible_bonds
from conformer.generation.inputs import InputLine, MoleculeError, prepare_molecule
from conformer.generation.options import GenerateOptions
from conformer.generation.output import arrange_ensemble
from conformer.generation.relax import mmff_minimize
from conformer.generation.sampler import (
    ConformerModel,
    ModelSampler,
    molecule_seed,
    rdkit_conformers,
    resolve_device,
)
from conformer.parallel import parallel_map
from conformer.stereo import StereoChecker, StereoTally, correct_ensemble

FAILURE_PROPERTY = "failure_reason"


@dataclass
class GeneratedMolecule:
    """The outcome of one input.

    mol: the molecule with its conformers [C, N, 3] Angstrom (hydrogens unless the options
    say otherwise), or None when it failed; failure: the reason (None on success); extra: the
    SDF properties beyond the writer's own (method, stereo_guidance, input_smiles,
    stereo_wrong_conformers); tally: stereo-correct counts before/after correction; rejected:
    conformers dropped for bond lengths no chemistry has (``domain.implausible_bonds``).
    """

    line: InputLine
    mol: Chem.Mol | None = None
    failure: str | None = None
    extra: dict = field(default_factory=dict)
    tally: StereoTally = field(default_factory=StereoTally)
    rejected: int = 0  # conformers dropped for implausible bond lengths (never written)

    def properties(self) -> dict:
        """Every property the SDF writer sets on this molecule's records, except the
        per-record ``conformer`` index (conformer ids are 0..C-1 instead)."""
        count = self.mol.GetNumConformers() if self.mol is not None else 0
        return {"name": self.line.name, "smiles": self.line.smiles,
                "input_line": self.line.line_number, "n_conformers": count, **self.extra}

    def as_mol(self) -> Chem.Mol:
        """A Mol for the API: the ensemble with ``properties()`` set and ``_Name`` the name.
        On failure: the input molecule (an empty Mol if it cannot be parsed) with zero
        conformers, ``failure_reason`` and ``input`` (the input as given) set."""
        if self.mol is not None:
            out = Chem.Mol(self.mol)
            props = self.properties()
        else:
            out = _failed_molecule(self.line)
            props = {**self.properties(), FAILURE_PROPERTY: self.failure,
                     "input": self.line.text}
        out.SetProp("_Name", str(self.line.name))
        for key, value in props.items():
            if isinstance(value, bool):
                out.SetBoolProp(key, value)
            elif isinstance(value, int):
                out.SetIntProp(key, value)
            else:
                out.SetProp(key, str(value))
        return out


def _failed_molecule(line: InputLine) -> Chem.Mol:
    if line.mol is not None:
        out = Chem.Mol(line.mol)
    else:
        with BlockLogs():  # its parse error was reported once already
            out = (Chem.MolFromSmiles(line.smiles) if line.smiles else None) or Chem.Mol()
    out.RemoveAllConformers()
    return out


def ensemble_mol(mol: Chem.Mol, positions: np.ndarray, hydrogens: bool) -> Chem.Mol:
    """``mol`` carrying ``positions`` [C, N, 3] Angstrom as conformers 0..C-1 (hydrogens
    removed unless ``hydrogens``)."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for xyz in positions:
        conformer = Chem.Conformer(out.GetNumAtoms())
        conformer.SetPositions(np.asarray(xyz, dtype=np.float64))
        out.AddConformer(conformer, assignId=True)
    return out if hydrogens else Chem.RemoveHs(out)


class MoleculeGenerator:
    """Generates molecule after molecule with one set of options (and one loaded model).

    model: for the model method, a loaded model to reuse; None loads ``options.ckpt`` (the
    bundled model by default) onto ``options.device``. The device is checked here, before
    any molecule, so a missing device is one clear error. ``device_option`` names the
    setting in that error (``--device`` for the CLI, ``device`` for the API).
    """

    def __init__(self, options: GenerateOptions, model: ConformerModel | None = None,
                 device_option: str = "--device"):
        self.options = options
        self.sampler: ModelSampler | None = None
        self.polish_threads = 1  # MMFF94 threads per polish; set by parallel_mode's split
        if options.method == "model":
            if model is None:
                model = ConformerModel.load(options.ckpt, options.device, device_option)
            self.sampler = ModelSampler(model, options.steps, options.batch_size,
                                        relax_hydrogens=options.relax_hydrogens)
        else:
            if model is not None:
                raise UserInputError(f"model: only the model method uses one (method is "
                                     f"{options.method})")
            resolve_device(options.device, device_option)  # a bad setting is an error anyway

    def run(self, lines: Sequence[InputLine]) -> Iterator[GeneratedMolecule]:
        """One GeneratedMolecule per line, in order.

        Model method with ``workers`` >= 2 (see ``model_parallelism``):
        - processes: ``workers`` processes take whole molecules (sample, polish, check), each
          on one torch thread; they start from this process's loaded model (forked where the
          platform can, else each loads it again);
        - threads: this thread samples molecule k + 1 while a second one polishes and checks
          molecule k (RDKit's minimiser releases the GIL); ``model_threads`` splits the cores.
        Each molecule draws from its own generator, in the same order whatever the mode, so
        the output is that of one molecule after the other on one thread (threads: byte for
        byte; processes: up to float32 rounding, as a worker's matrix kernels may sum in
        another order).
        """
        if self.sampler is None:
            yield from self._rdkit_molecules(lines)
            return
        mode = self.parallel_mode(len(lines))
        if mode == "processes":
            yield from self._model_in_processes(lines)
        elif mode == "threads":
            yield from self._model_in_pipeline(lines)
        else:
            for line in lines:
                yield self.generate_one(line)

    def parallel_mode(self, count: int = 2) -> str:
        """``inline``, ``processes`` or ``threads``: how ``run`` spreads the model method over
        ``options.workers`` for ``count`` molecules."""
        options = self.options
        if self.sampler is None or options.cores < 2 or count < 2:
            return "inline"
        mode = options.model_parallelism
        if mode == "auto":
            mode = "processes" if self.sampler.device.type == "cpu" else "threads"
        if mode == "threads" and not options.mmff:
            return "inline"  # nothing to put beside the sampler
        if mode == "processes" and self.sampler.device.type != "cpu":
            raise UserInputError(f"--model-parallelism processes: the model runs on "
                                 f"{self.sampler.device}; worker processes are for the CPU "
                                 "(use threads, or --device cpu)")
        return mode

    def apply_threads(self, count: int) -> str:
        """Set this process's torch threads and the polish's MMFF94 threads for ``count``
        molecules as ``parallel_mode`` will run them (``model_threads``); returns the mode."""
        mode = self.parallel_mode(count)
        torch_threads, self.polish_threads = model_threads(self.options.cores, mode)
        torch.set_num_threads(torch_threads)
        return mode

    def generate_one(self, line: InputLine) -> GeneratedMolecule:
        """One molecule of the model method, sampled, polished and checked here."""
        return self._finish_model(*self._draw_model(line))

    def _model_in_pipeline(self, lines):
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="conformer-polish")
        pending = deque()
        try:
            for line in lines:
                pending.append(pool.submit(self._finish_model, *self._draw_model(line)))
                while len(pending) > 1:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _model_in_processes(self, lines):
        import multiprocessing

        if "fork" in multiprocessing.get_all_start_methods():
            # the workers inherit this generator and its loaded model: no second load. This
            # process ran torch on one thread (generate_file), so no OpenMP team is forked.
            context, initargs = "fork", (self, None)
        else:
            context, initargs = "spawn", (None, self.options)
        workers = min(self.options.cores, len(lines))  # no idle process per spare core
        with closing(parallel_map(_model_task, lines, workers, context=context,
                                  ordered=True, initializer=_model_worker_start,
                                  initargs=initargs)) as results:
            yield from results

    def _extra(self, line: InputLine) -> dict:
        extra = {"method": self.options.method}
        if self.options.method == "model":
            extra["stereo_guidance"] = "on" if self.options.stereo_guidance else "off"
        if line.input_smiles != line.smiles:
            extra["input_smiles"] = line.input_smiles
        return extra

    def _finish(self, line, mol, positions, resample, checker=None,
                polish: MmffPolish | None = None) -> GeneratedMolecule:
        options = self.options
        checker = checker or StereoChecker(mol)
        result = correct_ensemble(checker, positions, resample, options.max_resamples)
        extra = self._extra(line)
        if polish is not None:
            extra.update(polish.properties())
        keep = ~implausible_bonds(mol, result.positions) if options.bond_check else \
            np.ones(len(result.positions), dtype=bool)
        rejected = int((~keep).sum())
        # a rejected conformer is replaced by a fresh sample (stereo-corrected like the rest),
        # so the molecule still gets the count asked for; the stereo tally keeps measuring the
        # first draw only
        for _ in range(options.max_resamples if resample is not None else 0):
            todo = np.flatnonzero(~keep)
            if todo.size == 0:
                break
            fresh = correct_ensemble(checker, resample(int(todo.size)), resample,
                                     options.max_resamples)
            plausible = ~implausible_bonds(mol, fresh.positions)
            rejected += int((~plausible).sum())
            for slot, candidate, good, stereo_ok in zip(todo, fresh.positions, plausible,
                                                        fresh.correct_after, strict=True):
                if good:
                    result.positions[slot], result.correct_after[slot] = candidate, stereo_ok
                    keep[slot] = True
        if not keep.any():
            return GeneratedMolecule(
                line, failure=f"implausible bond lengths in all {rejected} conformers "
                "(out of the model's domain?)", extra=extra, tally=result.tally,
                rejected=rejected)
        ensemble, order, note = arrange_ensemble(
            ensemble_mol(mol, result.positions[keep], hydrogens=True), options.energies,
            options.prune_rms)
        if note is not None:
            extra["energy_note"] = note
        if options.prune_rms is not None:
            extra["pruned_conformers"] = int(keep.sum()) - len(order)
        if checker.has_stereo:
            # conformers that still miss the input's stereo after correction (empty: none),
            # numbered as written
            wrong = ~result.correct_after[keep][order]
            extra["stereo_wrong_conformers"] = ",".join(str(i) for i in np.flatnonzero(wrong))
        if not options.hydrogens:
            ensemble = Chem.RemoveHs(ensemble)
        return GeneratedMolecule(line, ensemble, extra=extra, tally=result.tally,
                                 rejected=rejected)

    def _draw_model(self, line: InputLine):
        """The network's part of a molecule: (line, mol, first draw [C, N, 3] as drawn,
        draw, checker, polish), or (line, failure GeneratedMolecule, ...) when it cannot be
        sampled."""
        options, sampler = self.options, self.sampler
        generator = torch.Generator().manual_seed(molecule_seed(options.seed, line.line_number))
        try:
            mol = prepare_molecule(line, options.max_atoms)
            check_domain(mol)
            checker = StereoChecker(mol)
            targets = checker.targets() if options.stereo_guidance else None
            # on mol's atoms whatever the model's graph (a heavy-atom-only model's hydrogens
            # are placed by RDKit), so the stereo check and correction below see every atom
            draw = sampler.molecule_draws(mol, generator, targets, options.guidance)
        except MoleculeError as error:
            failed = GeneratedMolecule(line, failure=str(error), extra=self._extra(line))
            return line, failed, None, None, None, None
        polish = None
        if options.mmff:
            # before the stereo and bond checks, so they judge the conformers as written;
            # resampled conformers go through it too
            polish = MmffPolish(mol, draw, threads=self.polish_threads)
        return line, mol, draw(options.conformer_count(line)), draw, checker, polish

    def _finish_model(self, line, mol, drawn, draw, checker, polish) -> GeneratedMolecule:
        if isinstance(mol, GeneratedMolecule):  # failed before sampling
            return mol
        if polish is None:
            return self._finish(line, mol, drawn, draw, checker)
        return self._finish(line, mol, polish.minimise(drawn), polish, checker, polish)

    def _rdkit_molecules(self, lines: Sequence[InputLine]) -> Iterator[GeneratedMolecule]:
        options = self.options
        tasks = [(line, options.conformer_count(line), options.method, options.seed,
                  options.max_atoms) for line in lines]
        workers = min(options.cores, len(tasks))  # no idle process per spare core
        # quiet only in worker processes: a serial run keeps this process's RDKit log as it is
        initializer = _quiet_rdkit if workers > 1 else None
        with closing(parallel_map(_rdkit_task, tasks, workers, ordered=True,
                                  initializer=initializer)) as results:
            for line, positions, error in results:
                if error is not None:
                    yield GeneratedMolecule(line, failure=error, extra=self._extra(line))
                    continue
                mol = prepare_molecule(line, options.max_atoms)  # the worker's atom order
                # ETKDG enforces stereo; the check still runs so the rates are measured, and
                # no resampling is needed beyond the reflection rule
                yield self._finish(line, mol, positions, None)


class MmffPolish:
    """``draw`` followed by MMFF94 minimisation (``conformer.generation.relax``): called with
    a count like ``draw``, returns [count, N, 3] Angstrom, centred. Counts what it did for the
    SDF properties; a molecule MMFF94 has no parameters for keeps its samples as drawn."""

    def __init__(self, mol: Chem.Mol, draw, threads: int = 1):
        self.mol, self.draw, self.threads = mol, draw, threads
        self.parameterised = True
        self.unconverged = 0

    def __call__(self, count: int) -> np.ndarray:
        return self.minimise(self.draw(count))

    def minimise(self, positions: np.ndarray) -> np.ndarray:
        """``positions`` [C, N, 3] (as drawn) minimised and centred."""
        if not self.parameterised:
            return positions
        outcome = mmff_minimize(self.mol, positions, num_threads=self.threads)
        if outcome is None:
            self.parameterised = False
            return positions
        minimised, unconverged = outcome
        self.unconverged += unconverged
        return minimised - minimised.mean(axis=1, keepdims=True)

    def properties(self) -> dict:
        """``mmff``: ``minimised`` or why not; ``mmff_unconverged``: conformers stopped at
        the iteration cap (also counting resampled ones)."""
        if not self.parameterised:
            return {"mmff": "not minimised: MMFF94 has no parameters for this molecule"}
        return {"mmff": "minimised", "mmff_unconverged": self.unconverged}


def model_threads(workers: int | None, mode: str) -> tuple[int, int]:
    """How the model method spends ``workers`` CPU threads in a ``parallel_mode``: (torch
    threads of this process, MMFF94 threads per polish). Processes: one each per worker
    (this process only hands out molecules). Threads: the sampler gets the larger half, the
    polish beside it the rest."""
    workers = max(1, int(workers or 1))
    if mode == "processes":
        return 1, 1
    if mode == "threads":
        return workers - workers // 2, max(1, workers // 2)
    return workers, workers


_WORKER_GENERATOR: MoleculeGenerator | None = None


def _model_worker_start(generator: MoleculeGenerator | None,
                        options: GenerateOptions | None) -> None:
    """A model worker process: one torch thread, its own generator (inherited or loaded),
    molecule properties kept when its results are pickled back."""
    global _WORKER_GENERATOR
    import dataclasses

    torch.set_num_threads(1)
    RDLogger.DisableLog("rdApp.*")
    Chem.SetDefaultPickleProperties(Chem.PropertyPickleOptions.AllProps)
    if generator is None:
        generator = MoleculeGenerator(dataclasses.replace(options, workers=1))
    generator.polish_threads = 1
    _WORKER_GENERATOR = generator


def _model_task(line: InputLine) -> GeneratedMolecule:
    try:
        return _WORKER_GENERATOR.generate_one(line)
    except MoleculeError as error:
        return GeneratedMolecule(line, failure=str(error),
                                 extra=_WORKER_GENERATOR._extra(line))


def _quiet_rdkit() -> None:
    RDLogger.DisableLog("rdApp.*")  # a worker's RDKit warnings would interleave on stderr


def _rdkit_task(task):
    line, count, method, seed, max_atoms = task
    try:
        mol = prepare_molecule(line, max_atoms)
        positions = rdkit_conformers(mol, count, method, molecule_seed(seed, line.line_number))
        return line, positions, None
    except MoleculeError as error:
        return line, None, str(error)
    except Exception as error:  # an RDKit failure on one molecule must not stop the file
        return line, None, f"{method} failed: {error}"
