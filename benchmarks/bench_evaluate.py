"""``conformer evaluate``'s code path against a GetBestRMS loop, same SDF files, same process.

Both sides start from the same SDF files on disk and end at COV/MAT; each round reads both
files again (nothing is cached between rounds on either side):

- evaluate: ``load_references`` and :func:`conformer.evaluate.evaluator.evaluate` as
  ``conformer evaluate`` runs them with their defaults (reading and matching the files with the
  fast reader, the batched RMSD engine, the per-molecule cache, COV/MAT and every output file:
  results.json, table.md, rmsd.npz, coverage.svg), validity checks off (``--validity-confs
  0``: they are not COV/MAT), a new output folder per round so no cached result is reused.
  Reading ``rmsd.npz`` back to compare the numbers is outside the timing;
- loop: read the same files with RDKit's reader (``read_conformer_groups``, what a script
  calling GetBestRMS would use), group them, ``RemoveHs`` once per conformer, then
  ``rdMolAlign.GetBestRMS(ref, gen)`` for every pair, then the same COV/MAT.

Per-process costs (imports; evaluate's git revision lookup, done once per process) fall in
the first round only; the table reports the best round of each side.

Two sets, as ``benchmarks/bench_rmsd.py`` builds them: the first 20 Hutchison molecules (with at
least 5 references) with their K references and 2K ETKDG conformers, and the GEOM-sized set
(each molecule's references replaced by K = 49 ETKDG conformers, 49 x 98 pairs per molecule).
The generated file's ``smiles`` property is the heavy-atom SMILES, as an input file gives it.
Prints the times, the ratio and the largest |RMSD difference| to the loop. Targets (issue 12):
>= 10x on the Hutchison set, >= 30x on the GEOM-sized set. Ratios hold on a loaded machine
(rounds interleave the two sides); absolute times do not.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_evaluate.py [--workers 2] [--repeats 3]
        [--set-dir DIR]  # keep the written sets in DIR and reuse them in later runs
        [--clock cpu]  # CPU seconds of this process instead of elapsed seconds
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rdkit import Chem, RDLogger  # noqa: E402
from rdkit.Chem import rdMolAlign  # noqa: E402

from conformer.baselines import generate_rdkit  # noqa: E402
from conformer.evaluate import metrics as M  # noqa: E402
from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references  # noqa: E402
from conformer.sdf_io import ConformerSDFWriter, read_conformer_groups  # noqa: E402

TARGETS = {"hutchison": 10.0, "geom-sized": 30.0}
_clock = time.perf_counter  # --clock cpu: time.process_time


def write_set(folder: Path, references: str, n_molecules: int, geom_like_k: int) -> tuple:
    """refs.sdf (grouped by 'molecule') and gen.sdf (generate's layout) for one set."""
    groups = read_conformer_groups(references, key="molecule")
    names = [n for n in sorted(groups) if len(groups[n]) >= 5][:n_molecules]
    folder.mkdir(parents=True, exist_ok=True)
    ref_path, gen_path = folder / "refs.sdf", folder / "gen.sdf"
    ref_writer = Chem.SDWriter(str(ref_path))
    with ConformerSDFWriter(gen_path) as gen_writer:
        for i, name in enumerate(names):
            refs = groups[name]
            smiles = Chem.MolToSmiles(refs[0])
            graph = Chem.MolFromSmiles(smiles)
            if geom_like_k:
                ref_mol = generate_rdkit(graph, geom_like_k, seed=5000 + i)
                refs = [Chem.Mol(ref_mol, confId=c.GetId()) for c in ref_mol.GetConformers()]
            for ref in refs:
                ref = Chem.Mol(ref)
                ref.SetProp("molecule", name)
                ref_writer.write(ref)
            # the smiles property as an input file gives it: hydrogens implicit
            gen_writer.write_molecule(generate_rdkit(graph, 2 * len(refs), seed=100 + i), name,
                                      Chem.MolToSmiles(graph), i + 1)
    ref_writer.close()
    return ref_path, gen_path


def loop(ref_path: Path, gen_path: Path, threshold: float) -> tuple[dict, dict]:
    """COV/MAT from a pair-by-pair GetBestRMS loop over the same files."""
    refs = read_conformer_groups(ref_path, key="molecule")
    gens = read_conformer_groups(gen_path, key="name")
    matrices, scores = {}, []
    for name in sorted(refs):
        heavy_refs = [Chem.RemoveHs(m) for m in refs[name]]
        heavy_gens = [Chem.RemoveHs(m) for m in gens.get(name, [])]
        matrix = np.array([[rdMolAlign.GetBestRMS(r, g) for g in heavy_gens]
                           for r in heavy_refs]).reshape(len(heavy_refs), len(heavy_gens))
        matrices[name] = matrix
        scores.append(M.molecule_scores(name, matrix, threshold))
    return M.aggregate(scores, threshold), matrices


def run_evaluate(ref_path: Path, gen_path: Path, out: Path, workers: int) -> dict:
    """``conformer evaluate``'s path with its defaults (``--plot svg``), validity off, into
    ``out`` (a new folder: no cached result is reused)."""
    settings = EvaluationSettings(validity_confs_per_molecule=0)
    document = evaluate(gen_path, load_references(ref_path), out, settings, workers=workers,
                        progress=False)
    return document["metrics"]


def written_matrices(out: Path) -> dict:
    """The RMSD matrices evaluate wrote (read back to compare, outside the timing)."""
    with np.load(out / "rmsd.npz") as data:
        names = list(data["names"])
        return {n: data[f"m{i}"] for i, n in enumerate(names)}


def _cache_key(refs: dict, names: list[str], gen_path: Path) -> tuple:
    from conformer.evaluate.fast_sdf import records_digest
    from conformer.versions import file_sha256

    return records_digest(refs, names), file_sha256(gen_path)


def _engine_problems(refs: dict, matched: dict, names: list[str]) -> list:
    return [(refs[n].engine_molecules(), matched[n].engine_molecules()) for n in names]


def breakdown(ref_path: Path, gen_path: Path, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds of evaluate's stages, each timed on its own (one worker)."""
    from conformer.evaluate import evaluator as E
    from conformer.evaluate.fast_sdf import read_record_groups
    from conformer.evaluate.rmsd import rmsd_matrices

    best: dict[str, float] = {}

    def timed(stage, function, *args):
        start = _clock()
        value = function(*args)
        best[stage] = min(best.get(stage, np.inf), _clock() - start)
        return value

    for _ in range(repeats):
        refs, _ = E.split_name_clashes(timed("read references", E.load_references, ref_path))
        gens, _ = E.split_name_clashes(timed("read generated", read_record_groups, gen_path,
                                             "name", []))
        matched, _ = timed("match by name/SMILES", E.match_generated, refs, gens)
        names = sorted(refs)
        timed("cache key (digest, sha256)", _cache_key, refs, names, gen_path)
        problems = timed("engine molecules", _engine_problems, refs, matched, names)
        timed("RMSD engine (1 worker)", partial(rmsd_matrices, workers=1, on_mismatch="nan"),
              problems)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=20)
    parser.add_argument("--references", default="data/hutchison/hutchison_conformers.sdf.gz")
    parser.add_argument("--workers", type=int, default=1,
                        help="evaluate's --workers (default 1: both sides on one core)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many rounds")
    parser.add_argument("--sets", default="hutchison,geom-sized")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time evaluate's stages one by one")
    parser.add_argument("--set-dir", type=Path, default=None,
                        help="write each set's two files under this folder, or read them "
                             "from there when a run with the same options wrote them "
                             "(ETKDG takes minutes for the GEOM-sized set); default: a "
                             "temporary folder")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed seconds; cpu: this process's CPU seconds (both "
                             "sides run on one thread, so on a machine shared with other "
                             "jobs the CPU time leaves out the time spent waiting for a core)")
    args = parser.parse_args()
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    RDLogger.DisableLog("rdApp.*")
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.sets.split(","):
            folder = Path(tmp) / label
            ref_path, gen_path = folder / "refs.sdf", folder / "gen.sdf"
            if args.set_dir is not None:  # outputs still go to the temporary folder
                ref_path, gen_path = args.set_dir / label / "refs.sdf", \
                    args.set_dir / label / "gen.sdf"
            folder.mkdir(parents=True, exist_ok=True)
            if not (ref_path.exists() and gen_path.exists()):
                write_set(ref_path.parent, args.references, args.molecules,
                          49 if label == "geom-sized" else 0)
            loop_s, fast_s = [], []
            for round_index in range(args.repeats):  # interleaved: load hits both alike
                start = _clock()
                loop_metrics, loop_matrices = loop(ref_path, gen_path, 0.75)
                loop_s.append(_clock() - start)
                out = folder / f"out{round_index}"
                start = _clock()
                metrics = run_evaluate(ref_path, gen_path, out, args.workers)
                fast_s.append(_clock() - start)
                matrices = written_matrices(out)
            diff = max(float(np.abs(matrices[n] - loop_matrices[n]).max()) for n in matrices)
            same_cov = all(metrics[k] == loop_metrics[k] for k in
                           ("cov_r_mean", "cov_r_median", "cov_p_mean", "cov_p_median"))
            pairs = sum(m.size for m in matrices.values())
            ratio = min(loop_s) / min(fast_s)
            verdict = "meets" if ratio >= TARGETS[label] else "below"
            print(f"{label}: {len(matrices)} molecules, {pairs} pairs, best of {args.repeats}: "
                  f"loop {min(loop_s):.3f} s, evaluate {min(fast_s):.3f} s "
                  f"(first rounds {loop_s[0]:.3f} s, {fast_s[0]:.3f} s) "
                  f"(workers {args.workers}, {args.clock} clock), {ratio:.1f}x ({verdict} the "
                  f"{TARGETS[label]:.0f}x target), max |diff| {diff:.2e} A, "
                  f"COV identical: {same_cov}")
            if args.breakdown:
                for stage, seconds in breakdown(ref_path, gen_path, args.repeats).items():
                    print(f"  {stage}: {1000 * seconds:.1f} ms")


if __name__ == "__main__":
    main()
