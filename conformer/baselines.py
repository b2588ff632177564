"""RDKit baselines: ETKDGv3 conformers, optionally MMFF94-minimised (the field's "RDKit" row)."""

from __future__ import annotations

from rdkit import Chem
from rdkit.Chem import AllChem

METHODS = ("etkdg", "etkdg-mmff")
# also the cap of the model's MMFF94 polish (conformer.generation.relax), so the two compare
MMFF_MAX_ITERATIONS = 2000
DEFAULT_SEED = 20_231  # non-zero: in RDKit 2026.09 randomSeed=0 makes every conformer identical


class BaselineError(ValueError):
    """The baseline could not produce conformers (reason in the message)."""


def generate_rdkit(mol: Chem.Mol, num_confs: int, method: str = "etkdg",
                   seed: int = DEFAULT_SEED, num_threads: int = 1,
                   mmff_max_iters: int = MMFF_MAX_ITERATIONS) -> Chem.Mol:
    """Embed ``num_confs`` conformers of ``mol`` with ETKDGv3 (and MMFF94 for ``etkdg-mmff``).

    mol: an RDKit molecule; hydrogens are added (explicit H in the result, coordinates in
    Angstrom) and stereo tags are kept, so ETKDG honours them. Returns a new molecule with up to
    ``num_confs`` conformers (ETKDG may return fewer for strained systems); raises
    :class:`BaselineError` when no conformer could be embedded.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    if num_confs < 1:
        raise ValueError(f"num_confs {num_confs}: must be >= 1")
    if seed == 0:
        raise ValueError("seed 0 makes every ETKDG conformer identical in RDKit 2026.09")
    out = Chem.AddHs(Chem.Mol(mol), addCoords=False)
    out.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    params.numThreads = int(num_threads)
    conf_ids = list(AllChem.EmbedMultipleConfs(out, numConfs=int(num_confs), params=params))
    if not conf_ids:
        # Retry once with random starting coordinates, as RDKit suggests for hard cases.
        params.useRandomCoords = True
        conf_ids = list(AllChem.EmbedMultipleConfs(out, numConfs=int(num_confs), params=params))
    if not conf_ids:
        raise BaselineError("ETKDGv3 could not embed any conformer")
    if method == "etkdg-mmff":
        if not AllChem.MMFFHasAllMoleculeParams(out):
            raise BaselineError("MMFF94 has no parameters for this molecule")
        AllChem.MMFFOptimizeMoleculeConfs(out, numThreads=int(num_threads),
                                          maxIters=int(mmff_max_iters))
    return out
