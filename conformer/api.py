"""The Python API: ``conformer.generate``, ``conformer.load_model``, ``conformer.evaluate``.

    import conformer
    mols = conformer.generate(["CCO", "c1ccccc1O"], num_confs=10, seed=0)
    mols[0].GetNumConformers()  # 10; coordinates in Angstrom, hydrogens included

Generation runs the same per-molecule code as ``conformer generate`` (inputs, sampler, stereo
check and correction; see ``conformer.generation``); evaluation the same RMSD engine and
COV/MAT code as ``conformer evaluate``. Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from conformer.diffusion.guidance import GuidanceSettings
from conformer.errors import UserInputError
from conformer.evaluate.metrics import THRESHOLDS
from conformer.generation.ensemble import FAILURE_PROPERTY, MoleculeGenerator
from conformer.generation.inputs import lines_from_molecules
from conformer.generation.options import DEFAULT_NUM_CONFS, GenerateOptions
from conformer.generation.sampler import ConformerModel

__all__ = ["ConformerModel", "FAILURE_PROPERTY", "evaluate", "generate", "load_model"]


def load_model(path: str | Path | None = None, device: str = "auto") -> ConformerModel:
    """A diffusion model to pass to :func:`generate` as ``model=`` (loaded once, reused).

    path: a model file or training checkpoint of this project; None, the bundled model.
    device: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda:1"``...;
    a device that is not there raises UserInputError.
    """
    return ConformerModel.load(path, device, option="device")


# The keyword defaults are GenerateOptions' own (a dataclass field's default is also its class
# attribute), so the API and `conformer generate` cannot drift apart.
def generate(molecules: str | Chem.Mol | Iterable[str | Chem.Mol],
             num_confs: int = DEFAULT_NUM_CONFS, seed: int = GenerateOptions.seed,
             method: str = GenerateOptions.method,
             model: ConformerModel | str | Path | None = None,
             device: str = GenerateOptions.device,
             stereo_guidance: bool = GenerateOptions.stereo_guidance,
             steps: int | None = GenerateOptions.steps,
             batch_size: int = GenerateOptions.batch_size,
             hydrogens: bool = GenerateOptions.hydrogens,
             max_atoms: int = GenerateOptions.max_atoms,
             max_resamples: int = GenerateOptions.max_resamples,
             guidance: GuidanceSettings | None = None,
             bond_check: bool = GenerateOptions.bond_check,
             energies: str | None = GenerateOptions.energies,
             prune_rms: float | None = GenerateOptions.prune_rms,
             relax_hydrogens: bool = GenerateOptions.relax_hydrogens,
             mmff: bool = GenerateOptions.mmff) -> list[Chem.Mol]:
    """Conformers for each molecule: one Mol per input, in input order.

    molecules: SMILES strings and/or RDKit Mols (a Mol keeps its atom order, stereo tags and
    name; missing hydrogens are added). A single string or Mol counts as a list of one.
    num_confs: conformers per molecule; seed: the run's seed (molecule k of the list draws from
    (seed, k), so the same seed gives the same conformers, and the k-th molecule gets what
    line k of a ``conformer generate`` input file would get with the same settings).
    method: ``"model"`` (the diffusion model), ``"etkdg"`` or ``"etkdg-mmff"`` (RDKit).
    model: a :func:`load_model` result, or a model file path; None loads the bundled model.
    device: where a model loaded here runs (``"auto"``, ``"cpu"``, ``"cuda"``, ...); a model
    from :func:`load_model` stays on its own device.
    stereo_guidance: steer the sampler towards the input's tetrahedral and E/Z stereo. Either
    way each conformer's stereo is checked and corrected (mirrored or resampled, at most
    ``max_resamples`` rounds) as the CLI does. steps, batch_size, hydrogens, max_atoms,
    guidance: as the CLI options of the same names. The model method takes only molecules of
    its domain (``conformer.generation.domain.SUPPORTED_ATOMS``: elements, formal charges,
    neighbours); bond_check drops conformers with a bond outside [0.6, 1.5] x the sum of its
    atoms' covalent radii (a molecule left without any fails), as the CLI does.
    energies: ``"mmff"`` sets each conformer's ``mmff94_energy`` and ``mmff94_relative_energy``
    (kcal/mol, conformer properties: ``mol.GetConformer(i).GetDoubleProp(...)``) and sorts
    the conformers by it; prune_rms: Angstrom, drops conformers within that heavy-atom RMSD
    of one kept before them (RDKit's pruneRmsThresh). Conformers are aligned to the first.
    relax_hydrogens: for a heavy-atom-only model (trained with ``data.hydrogens=implicit``,
    whose hydrogens RDKit places), minimise those hydrogens with MMFF94, heavy atoms fixed.
    mmff: model method, minimise every conformer with MMFF94, all atoms (as ``etkdg-mmff``
    does to ETKDG's), before the stereo and bond checks; each Mol then carries ``mmff``
    (``minimised``, or why not) and ``mmff_unconverged``.

    Each returned Mol carries its conformers (ids 0..C-1, Angstrom; hydrogens unless
    ``hydrogens=False``) and the properties the CLI writes into the SDF: ``name`` (also
    ``_Name``), ``smiles``, ``input_line`` (the 1-based position), ``n_conformers``,
    ``method``, ``stereo_guidance`` (model), ``stereo_wrong_conformers`` (with stereo).
    A molecule that fails comes back with zero conformers, ``failure_reason`` and ``input``
    (the input as given); an unparsable SMILES gives an empty Mol with those properties.
    Bad settings raise UserInputError.
    """
    if isinstance(molecules, str | Chem.Mol):
        molecules = [molecules]
    lines = lines_from_molecules(molecules)
    loaded = None
    if isinstance(model, ConformerModel):
        loaded = model
    elif model is not None:
        if method != "model":
            raise UserInputError(f"model {model}: only the model method uses one "
                                 f"(method is {method})")
    options = GenerateOptions(
        method=method, ckpt=None if model is None or loaded else str(model),
        num_confs=num_confs, steps=steps, batch_size=batch_size, device=device, seed=seed,
        hydrogens=hydrogens, max_atoms=max_atoms, max_resamples=max_resamples,
        stereo_guidance=stereo_guidance, guidance=guidance or GuidanceSettings(),
        bond_check=bond_check, energies=energies, prune_rms=prune_rms,
        relax_hydrogens=relax_hydrogens, mmff=mmff, workers=1, progress=False)
    generator = MoleculeGenerator(options, loaded, device_option="device")
    return [result.as_mol() for result in generator.run(lines)]


# -- evaluation ----------------------------------------------------------------------------
ConformerSet = Chem.Mol | Sequence[Chem.Mol]


def _as_mol_list(entry: ConformerSet | None) -> list[Chem.Mol]:
    """A molecule's conformers as a list of Mols (every conformer of each Mol counts)."""
    if entry is None:
        return []
    mols = [entry] if isinstance(entry, Chem.Mol) else list(entry)
    return [m for m in mols if m is not None and m.GetNumConformers() > 0]


def _mol_name(entry: ConformerSet, index: int) -> str:
    first = entry if isinstance(entry, Chem.Mol) else (entry[0] if len(entry) else None)
    for key in ("name", "_Name"):
        if first is not None and first.HasProp(key) and first.GetProp(key).strip():
            return first.GetProp(key)
    return str(index)


def _keyed(generated, references) -> tuple[dict, dict, list[str]]:
    """(generated by key, references by key, display names) from two dicts or two lists."""
    if isinstance(generated, Mapping) != isinstance(references, Mapping):
        raise UserInputError("evaluate: generated and references must both be lists (matched "
                             "by position) or both be dicts (matched by key)")
    if isinstance(references, Mapping):
        return dict(generated), dict(references), [str(k) for k in references]
    generated, references = list(generated), list(references)
    if len(generated) != len(references):
        raise UserInputError(f"evaluate: {len(generated)} generated and {len(references)} "
                             "reference molecules; lists are matched by position")
    # positions are the keys (names may repeat); names only label the results
    names = [_mol_name(ref, i) for i, ref in enumerate(references)]
    return dict(enumerate(generated)), dict(enumerate(references)), names


def evaluate(generated: Sequence[ConformerSet] | Mapping[str, ConformerSet],
             references: Sequence[ConformerSet] | Mapping[str, ConformerSet],
             threshold: float = THRESHOLDS["drugs"], workers: int = 1) -> dict:
    """COV-R, MAT-R, COV-P and MAT-P of generated conformers against reference conformers.

    generated, references: per molecule, a Mol with conformers or a list of Mols (every
    conformer counts); either two lists matched by position or two dicts matched by key.
    threshold: Angstrom, strict ``<`` (0.75 for GEOM-Drugs, 0.5 for QM9). workers: processes
    for the RMSD engine (1: this process).

    RMSD is heavy-atom ``GetBestRMS(ref, gen)`` (``conformer.evaluate.rmsd``); the scores
    are those of ``conformer evaluate`` (``conformer.evaluate.metrics``): a molecule with no
    generated conformer counts with coverage 0 and no MAT, generated conformers whose graph
    differs from the reference are dropped, a molecule without reference conformers is left
    out; each such case is listed in ``failures``.

    Returns ``{"metrics": {threshold, n_molecules, cov_r_mean, cov_r_median, mat_r_mean, ...},
    "per_molecule": [{name, n_ref, n_gen, cov_r, mat_r, cov_p, mat_p, n_gen_mismatched}],
    "failures": [{name, reason}], "rmsd": [(K, G) array per entry of per_molecule]}``, with
    K reference and G generated conformers, RMSD in Angstrom, COV in [0, 1].
    """
    from conformer.evaluate import metrics
    from conformer.evaluate.rmsd import rmsd_matrices

    if not threshold > 0:
        raise UserInputError(f"evaluate: threshold {threshold}: must be a positive distance "
                             "in Angstrom")
    gen_by_key, ref_by_key, names = _keyed(generated, references)
    failures: list[dict] = []
    for key in gen_by_key:
        if key not in ref_by_key:
            failures.append({"name": str(key), "reason": "matches no reference key"})
    scored = []  # (name, refs, gens)
    for key, name in zip(ref_by_key, names, strict=True):
        refs = _as_mol_list(ref_by_key[key])
        if not refs:
            failures.append({"name": name, "reason": "no reference conformer (excluded)"})
            continue
        scored.append((name, refs, _as_mol_list(gen_by_key.get(key))))
    with_gens = [(refs, gens) for _, refs, gens in scored if gens]
    computed = iter(rmsd_matrices(with_gens, workers=workers, on_mismatch="nan"))
    per_molecule, matrices, scores = [], [], []
    for name, refs, gens in scored:
        n_ref = sum(m.GetNumConformers() for m in refs)
        matrix = next(computed) if gens else np.zeros((n_ref, 0))
        keep = ~np.isnan(matrix).any(axis=0)
        mismatched = int((~keep).sum())
        matrix = matrix[:, keep]
        if matrix.shape[1] == 0:
            reason = ("no generated conformer" if mismatched == 0 else
                      f"all {mismatched} generated conformers have a different graph")
            failures.append({"name": name, "reason": reason + " (coverage 0, MAT excluded)"})
        elif mismatched:
            failures.append({"name": name, "reason": f"{mismatched} generated conformers "
                             "have a different graph (dropped)"})
        score = metrics.molecule_scores(name, matrix, threshold)
        scores.append(score)
        per_molecule.append(score.as_dict() | {"n_gen_mismatched": mismatched})
        matrices.append(matrix)
    return {"metrics": metrics.aggregate(scores, threshold), "per_molecule": per_molecule,
            "failures": failures, "rmsd": matrices}
