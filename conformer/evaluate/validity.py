"""Physical validity of generated conformers, reported beside COV/MAT (plain RDKit).

Per conformer:

- bonds: fraction of bonds (hydrogens included) whose length is within ``BOND_TOL_A`` (0.1 A)
  of the same bond after MMFF94 minimisation *of that conformer* (so the check asks "is the
  local geometry already what a force field wants", not "is it the reference conformer");
- angles: fraction of bond angles within ``ANGLE_TOL_DEG`` (10 degrees) of the minimised ones;
- clashes: heavy-atom pairs more than 3 bonds apart whose distance is below
  ``CLASH_SCALE`` (0.7) x the sum of their van der Waals radii (C...C: 2.38 A);
- stereo: the CIP labels perceived from the 3D coordinates (``AssignStereochemistryFrom3D``)
  equal those of ``reference_smiles``, for tetrahedral centres and double bonds.

Molecules MMFF94 cannot parametrise get ``None`` for bonds and angles (counted in the report).
"""

from __future__ import annotations

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

BOND_TOL_A = 0.1
ANGLE_TOL_DEG = 10.0
CLASH_SCALE = 0.7
MMFF_MAX_ITERS = 2000
SETTINGS = {"bond_tolerance_A": BOND_TOL_A, "angle_tolerance_deg": ANGLE_TOL_DEG,
            "clash_scale_of_vdw_sum": CLASH_SCALE, "clash_min_bond_separation": 4,
            "mmff_variant": "MMFF94", "mmff_max_iters": MMFF_MAX_ITERS}


def _angle_triples(mol: Chem.Mol) -> np.ndarray:
    triples = []
    for atom in mol.GetAtoms():
        neighbours = [n.GetIdx() for n in atom.GetNeighbors()]
        for i in range(len(neighbours)):
            for j in range(i + 1, len(neighbours)):
                triples.append((neighbours[i], atom.GetIdx(), neighbours[j]))
    return np.asarray(triples, dtype=np.int64).reshape(-1, 3)


def _bond_lengths(xyz: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    return np.linalg.norm(xyz[bonds[:, 0]] - xyz[bonds[:, 1]], axis=1)


def _angles_deg(xyz: np.ndarray, triples: np.ndarray) -> np.ndarray:
    u = xyz[triples[:, 0]] - xyz[triples[:, 1]]
    v = xyz[triples[:, 2]] - xyz[triples[:, 1]]
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _stereo_labels(mol: Chem.Mol) -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    """CIP labels of tetrahedral centres and E/Z of double bonds (legacy perception)."""
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True)
    centres = {a.GetIdx(): a.GetProp("_CIPCode") for a in mol.GetAtoms() if a.HasProp("_CIPCode")}
    bonds = {}
    for bond in mol.GetBonds():
        if bond.GetStereo() in (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOZ):
            key = tuple(sorted((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())))
            bonds[key] = "E" if bond.GetStereo() == Chem.BondStereo.STEREOE else "Z"
    return centres, bonds


def _clash_pairs(heavy: Chem.Mol) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-atom pairs >= 4 bonds apart and their clash distance limits (Angstrom)."""
    table = Chem.GetPeriodicTable()
    topo = Chem.GetDistanceMatrix(heavy)
    i, j = np.triu_indices(heavy.GetNumAtoms(), k=1)
    keep = topo[i, j] >= 4
    i, j = i[keep], j[keep]
    radii = np.array([table.GetRvdw(a.GetAtomicNum()) for a in heavy.GetAtoms()])
    return np.stack([i, j], 1), CLASH_SCALE * (radii[i] + radii[j])


def validity_report(mol_with_confs: Chem.Mol, reference_smiles: str) -> dict:
    """Validity of every conformer of ``mol_with_confs`` (hydrogens optional, Angstrom).

    Returns ``{"n_conformers", "mmff_parametrised", "per_conformer": [{"bonds_ok_fraction",
    "angles_ok_fraction", "n_clashes", "stereo_ok"}...], "summary": {...}}`` where the summary
    holds the means over conformers and the fraction of conformers with a clash / correct stereo.
    The input is not modified.
    """
    mol = Chem.Mol(mol_with_confs)
    with_h = Chem.AddHs(mol, addCoords=True) if _missing_hydrogens(mol) else Chem.Mol(mol)
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in with_h.GetBonds()],
                     dtype=np.int64).reshape(-1, 2)
    triples = _angle_triples(with_h)
    props = AllChem.MMFFGetMoleculeProperties(with_h)

    heavy = Chem.RemoveHs(Chem.Mol(mol), sanitize=False)
    clash_pairs, clash_limits = _clash_pairs(heavy)
    reference = Chem.MolFromSmiles(reference_smiles)
    if reference is None:
        raise ValueError(f"reference SMILES {reference_smiles!r} cannot be parsed")
    ref_centres, ref_bonds = _stereo_labels(Chem.Mol(reference))
    mapping = heavy.GetSubstructMatch(Chem.RemoveHs(reference), useChirality=False)

    per_conformer = []
    for conf, heavy_conf in zip(with_h.GetConformers(), heavy.GetConformers(), strict=True):
        xyz = np.asarray(conf.GetPositions(), dtype=np.float64)
        entry: dict = {"bonds_ok_fraction": None, "angles_ok_fraction": None}
        if props is not None:
            single = Chem.Mol(with_h)
            single.RemoveAllConformers()
            single.AddConformer(Chem.Conformer(conf), assignId=True)
            field = AllChem.MMFFGetMoleculeForceField(single, props)
            try:
                field.Minimize(maxIts=MMFF_MAX_ITERS)
                relaxed = np.asarray(field.Positions(), dtype=np.float64).reshape(-1, 3)
            except RuntimeError as error:  # e.g. "bad direction in linearSearch" on a
                relaxed = None  # badly distorted conformer: that conformer goes unscored
                entry["mmff_error"] = str(error).splitlines()[0][:200]
            if relaxed is not None and len(bonds):
                entry["bonds_ok_fraction"] = float(
                    (np.abs(_bond_lengths(xyz, bonds) - _bond_lengths(relaxed, bonds))
                     <= BOND_TOL_A).mean())
            if relaxed is not None and len(triples):
                entry["angles_ok_fraction"] = float(
                    (np.abs(_angles_deg(xyz, triples) - _angles_deg(relaxed, triples))
                     <= ANGLE_TOL_DEG).mean())
        heavy_xyz = np.asarray(heavy_conf.GetPositions(), dtype=np.float64)
        distances = np.linalg.norm(heavy_xyz[clash_pairs[:, 0]] - heavy_xyz[clash_pairs[:, 1]],
                                   axis=1) if len(clash_pairs) else np.zeros(0)
        entry["n_clashes"] = int((distances < clash_limits).sum())
        entry["stereo_ok"] = _stereo_matches(heavy, heavy_conf.GetId(), mapping,
                                             ref_centres, ref_bonds)
        per_conformer.append(entry)
    return {"n_conformers": len(per_conformer), "mmff_parametrised": props is not None,
            "per_conformer": per_conformer, "summary": summarize(per_conformer)}


def _missing_hydrogens(mol: Chem.Mol) -> bool:
    return any(a.GetTotalNumHs(includeNeighbors=False) > 0 for a in mol.GetAtoms())


def _stereo_matches(heavy: Chem.Mol, conf_id: int, mapping: tuple[int, ...],
                    ref_centres: dict, ref_bonds: dict) -> bool | None:
    """CIP labels from this conformer's 3D coordinates equal the reference's (None: no map)."""
    if not mapping:
        return None
    probe = Chem.Mol(heavy)
    for atom in probe.GetAtoms():
        atom.SetChiralTag(Chem.ChiralType.CHI_UNSPECIFIED)
    for bond in probe.GetBonds():
        bond.SetStereo(Chem.BondStereo.STEREONONE)
    Chem.AssignStereochemistryFrom3D(probe, confId=conf_id)
    centres, bonds = _stereo_labels(probe)
    # reference atom r corresponds to probe atom mapping[r]
    for ref_atom, label in ref_centres.items():
        if centres.get(mapping[ref_atom]) != label:
            return False
    for (a, b), label in ref_bonds.items():
        if bonds.get(tuple(sorted((mapping[a], mapping[b])))) != label:
            return False
    return True


def summarize(per_conformer: list[dict]) -> dict:
    """Means over conformers; ``None`` entries (not computable) are left out and counted."""

    def mean(key):
        values = [e[key] for e in per_conformer if e.get(key) is not None]
        return float(np.mean(values)) if values else None

    stereo = [e["stereo_ok"] for e in per_conformer if e.get("stereo_ok") is not None]
    return {
        "n_conformers": len(per_conformer),
        "bonds_ok_fraction_mean": mean("bonds_ok_fraction"),
        "angles_ok_fraction_mean": mean("angles_ok_fraction"),
        "clash_free_fraction": (float(np.mean([e["n_clashes"] == 0 for e in per_conformer]))
                                if per_conformer else None),
        "stereo_ok_fraction": float(np.mean(stereo)) if stereo else None,
        "n_not_mmff_parametrised": sum(e.get("bonds_ok_fraction") is None
                                       for e in per_conformer),
        "n_mmff_errors": sum("mmff_error" in e for e in per_conformer),
    }


# -- PoseBusters (optional extra) -----------------------------------------------------------
POSEBUSTERS_MISSING = ("--posebusters: the posebusters package is not installed; install it "
                       "with pip install 'conformer[posebusters]' (or pip install posebusters)")


def require_posebusters() -> None:
    """UserInputError with the install command unless ``posebusters`` imports."""
    from conformer.errors import UserInputError

    try:
        import posebusters  # noqa: F401
    except ImportError:
        raise UserInputError(POSEBUSTERS_MISSING) from None


def posebusters_report(generated_sdf, out_csv) -> dict:
    """PoseBusters' molecule checks (``config="mol"``: sanitisation, bond lengths and angles,
    clashes, flatness, energy ratio...) on every record of ``generated_sdf``, one row per
    record written to ``out_csv``. Returns ``{"conformers": n, "all_checks_passed": fraction
    of records passing every check, "checks": {check: pass fraction}}``."""
    require_posebusters()
    from posebusters import PoseBusters

    table = PoseBusters(config="mol").bust([str(generated_sdf)], None, None,
                                           full_report=False)
    table.to_csv(out_csv)
    checks = table.select_dtypes(include="bool")
    return {"conformers": int(len(table)),
            "all_checks_passed": float(checks.all(axis=1).mean()) if len(table) else None,
            "checks": {str(k): float(v) for k, v in checks.mean().items()}}
