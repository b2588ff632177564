"""SMILES file in, SDF out: the loop of ``conformer generate`` over ``MoleculeGenerator``.

Every input line ends up either as conformers in the SDF (``input_line`` property) or as a row
of ``OUT.failures.csv`` (line, input, reason). Molecules are written as soon as they are done,
so an interrupted run resumes where it stopped: rerunning the same command skips the input
lines already in the SDF or in the failures file. Per-molecule seeding (see
``conformer.generation.sampler``) makes a resumed run write what an uninterrupted one would.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rdkit import RDLogger

from conformer.errors import UserInputError
from conformer.generation.ensemble import MoleculeGenerator
from conformer.generation.inputs import InputLine, read_inputs
from conformer.generation.options import GenerateOptions
from conformer.stereo import StereoTally


@dataclass
class GenerateSummary:
    molecules: int = 0
    conformers: int = 0
    failures: int = 0
    skipped_done: int = 0
    rejected_conformers: int = 0  # implausible bond lengths: never written
    failure_reasons: Counter = field(default_factory=Counter)
    stereo: StereoTally = field(default_factory=StereoTally)
    stereo_guidance: bool | None = None  # None: not a model run (no guidance to speak of)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "molecules": self.molecules, "conformers": self.conformers,
            "failures": self.failures, "skipped_already_done": self.skipped_done,
            "conformers_rejected_bond_lengths": self.rejected_conformers,
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
            f"conformers:  {self.conformers}" + (
                f" ({self.rejected_conformers} more rejected for implausible bond lengths, "
                "not written)" if self.rejected_conformers else ""),
            f"failures:    {self.failures}" + (f" ({reasons})" if reasons else ""),
            f"stereo-correct before correction: {pct(self.stereo.rate_before())} "
            f"of {self.stereo.conformers} conformers with specified stereo{sampled}",
            f"stereo-correct after correction:  {pct(self.stereo.rate_after())} "
            f"({self.stereo.reflected} reflected, {self.stereo.resampled} resampled)",
            f"time:        {self.seconds:.1f} s"
            + (f" ({self.conformers / self.seconds:.2f} conformers/s)" if self.seconds else ""),
        ]
        return "\n".join(lines)


def failures_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".failures.csv")


def settings_path(out: str | Path) -> Path:
    """Where the settings of the run that writes ``out`` are kept (``OUT.settings.json``)."""
    out = Path(out)
    return out.with_name(out.stem + ".settings.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_settings(options: GenerateOptions) -> dict:
    """The settings that decide what a run writes, as stored in ``OUT.settings.json``: method,
    conformer counts, seed, output form and, for the model, its file's sha256, sampler steps
    and guidance. Device, workers, batch size and progress change no conformer: not kept."""
    settings = {
        "method": options.method, "num_confs": options.num_confs, "ratio": options.ratio,
        "seed": options.seed, "hydrogens": options.hydrogens, "max_atoms": options.max_atoms,
        "max_resamples": options.max_resamples, "bond_check": options.bond_check,
        "energies": options.energies, "prune_rms": options.prune_rms, "kekulized": True,
        "aligned": True,
    }
    if options.method == "model":
        from conformer.model_io import BUNDLED_MODEL

        model = Path(options.ckpt) if options.ckpt else BUNDLED_MODEL
        settings.update({"model_sha256": _sha256(model), "steps": options.steps,
                         "stereo_guidance": options.stereo_guidance,
                         "guidance": dataclasses.asdict(options.guidance)})
        if options.relax_hydrogens:  # only when on: older settings files stay comparable
            settings["relax_hydrogens"] = True
        if options.mmff:  # on by default since session 10: files written before had no polish
            settings["mmff"] = True
    return settings


def _settings_differences(stored: dict, current: dict) -> list[str]:
    keys = sorted(set(stored) | set(current))
    return [f"{key} {stored.get(key)!r} -> {current.get(key)!r}" for key in keys
            if stored.get(key) != current.get(key)]


def _start_or_resume(out: Path, options: GenerateOptions, overwrite: bool) -> None:
    """Compare this run's settings with those stored beside an existing output: resuming with
    other settings would mix two runs in one file, so it is an error unless ``overwrite``,
    which deletes the output, its failures and settings files and starts afresh."""
    paths = (out, failures_path(out), settings_path(out))
    current = json.loads(json.dumps(run_settings(options)))  # tuples as lists, as stored
    if overwrite:
        for path in paths:
            path.unlink(missing_ok=True)
    elif out.exists() or failures_path(out).exists():
        stored = None
        if settings_path(out).exists():
            try:
                stored = json.loads(settings_path(out).read_text())
            except (OSError, ValueError) as error:
                raise UserInputError(f"--out {out}: cannot read {settings_path(out)} "
                                     f"({error}); add --overwrite to start afresh") from None
        # an output without settings file (written before they were kept): resumed as is
        if stored is not None and stored != current:
            changed = "; ".join(_settings_differences(stored, current))
            raise UserInputError(f"--out {out}: written with other settings ({changed}); rerun "
                                 "with the same settings to resume, or add --overwrite to "
                                 "start afresh")
    try:
        settings_path(out).write_text(json.dumps(current, indent=2) + "\n")
    except OSError as error:
        raise UserInputError(f"--out {out}: cannot write {settings_path(out)} "
                             f"({error.strerror or error})") from None


def _failed_lines(path: Path) -> set[int]:
    if not path.exists():
        return set()
    with open(path, newline="") as handle:
        return {int(row["line"]) for row in csv.DictReader(handle) if row.get("line")}


class _FailureLog:
    """``OUT.failures.csv``, created at the first failure (a run without failures leaves no
    file behind) and appended to on resume."""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.writer = None

    def write(self, line: InputLine, reason: str) -> None:
        if self.handle is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self.handle = _open_output(self.path, "a", newline="")
            self.writer = csv.writer(self.handle)
            if new:
                self.writer.writerow(["line", "input", "reason"])
        self.writer.writerow([line.line_number, line.text, reason])
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _open_output(path: Path, mode: str, **kwargs):
    try:
        return open(path, mode, **kwargs)
    except OSError as error:
        raise UserInputError(f"--out {path}: cannot write ({error.strerror or error})") from None


def check_output_path(out: Path) -> None:
    """UserInputError (naming the path and the reason) unless ``out`` and its failures file
    can be written: not a directory, every existing parent a directory, the directory
    writable. Creates missing parent directories."""
    for path in (out, failures_path(out)):
        if path.is_dir():
            raise UserInputError(f"--out {path}: is a directory; give a file name such as "
                                 f"{path / 'conformers.sdf'}")
    parent = out.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise UserInputError(f"--out {out}: {ancestor} is a file, not a directory")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"--out {out}: cannot create {parent} "
                             f"({error.strerror or error})") from None
    for path in (out, failures_path(out)):
        target = path if path.exists() else parent
        if not os.access(target, os.W_OK):
            raise UserInputError(f"--out {out}: {target} is not writable (permission denied)")


def _progress(total: int, enabled: bool | None):
    from tqdm import tqdm

    disable = not sys.stderr.isatty() if enabled is None else not enabled
    return tqdm(total=total, unit="mol", desc="generate", disable=disable)


def generate_file(input_path: str | Path, out: str | Path,
                  options: GenerateOptions | None = None,
                  overwrite: bool = False) -> GenerateSummary:
    """Generate conformers for every molecule of ``input_path`` into the SDF ``out``.

    The inputs are read, the model loaded (device checked) and the output path checked before
    any output file is created, so a bad input file, model, device or output path is one
    UserInputError and leaves nothing behind. ``OUT.failures.csv`` is created at the first
    failure. The run's settings (``run_settings``) are kept in ``OUT.settings.json``; resuming
    an output written with other settings is a UserInputError unless ``overwrite``, which
    starts the output afresh.
    """
    options = options or GenerateOptions()
    out = Path(out)
    lines = list(read_inputs(input_path))
    start = time.perf_counter()  # the model's loading counts, as it always has
    if options.method == "model" and options.cores > 1:
        # load on one thread: worker processes forked from here must not inherit an OpenMP
        # team (apply_threads raises the count again where this process samples)
        torch.set_num_threads(1)
    generator = MoleculeGenerator(options)
    if options.method == "model":
        generator.apply_threads(len(lines))
    check_output_path(out)
    _start_or_resume(out, options, overwrite)
    existed = {path: path.exists() for path in (out, failures_path(out))}
    try:
        return _generate_lines(lines, out, options, generator, start)
    except BaseException:
        # an error before anything was written leaves no empty file behind
        for path, was_there in existed.items():
            if not was_there and path.exists() and path.stat().st_size == 0:
                path.unlink()
        if not out.exists() and not failures_path(out).exists():
            settings_path(out).unlink(missing_ok=True)
        raise


def _generate_lines(lines, out: Path, options: GenerateOptions, generator: MoleculeGenerator,
                    start: float) -> GenerateSummary:
    from conformer import sdf_io

    done = set(sdf_io.completed_input_lines(out)) if out.exists() else set()
    fail_path = failures_path(out)
    done |= _failed_lines(fail_path)
    todo = [line for line in lines if line.line_number not in done]
    summary = GenerateSummary(skipped_done=len(lines) - len(todo))
    if options.method == "model":
        summary.stereo_guidance = options.stereo_guidance
    RDLogger.DisableLog("rdApp.*")
    failures = _FailureLog(fail_path)
    try:
        writer = sdf_io.ConformerSDFWriter(out, append=True)
    except OSError as error:
        raise UserInputError(f"--out {out}: cannot write ({error.strerror or error})") from None
    bar = _progress(len(todo), options.progress)
    try:
        for result in generator.run(todo):
            line = result.line
            summary.rejected_conformers += result.rejected
            if result.failure is not None:
                failures.write(line, result.failure)
                summary.failures += 1
                summary.failure_reasons[result.failure.split(" (")[0]] += 1
            else:
                summary.stereo.add(result.tally)
                summary.conformers += writer.write_molecule(
                    result.mol, line.name, line.smiles, line.line_number, result.extra)
                summary.molecules += 1
            bar.update(1)
    finally:
        bar.close()
        writer.close()
        failures.close()
        summary.seconds = time.perf_counter() - start
    return summary
