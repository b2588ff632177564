"""Does a generated conformer carry the input's stereochemistry? And fixing the ones that don't.

What is checked (the stereo the input SMILES specifies, after RDKit's perception):
- tetrahedral centres: the chiral tag (CW/CCW, relative to the atom's bond order) perceived from
  the 3D coordinates by ``Chem.AssignStereochemistryFrom3D`` equals the input's tag. Because the
  conformer is put on a copy of the same molecule, the neighbour order, and so the meaning of
  the tag, is the same on both sides; no CIP labels are compared.
- double bonds with E/Z (or cis/trans) set: the dihedral of the bond's two stereo atoms is
  < 90 degrees for cis and > 90 for trans. RDKit's stereo atoms of an E/Z bond are the
  neighbours of highest CIP rank, so E means they are trans. Every other substituent pair
  across the bond must agree (a substituent sharing its atom with a stereo atom is on the other
  side): a distorted sp2 atom with both substituents on one side is no defined E/Z, and RDKit's
  own 3D perception (which the evaluator uses) may then read either label.

Prevention comes first: the model sampler is guided towards these same targets
(``StereoChecker.targets``, used by ``conformer.diffusion.guidance.StereoGuidance``), so
"before correction" means as sampled (with guidance when it is on; the raw model's rate is
measured on a separate unguided run, ``--no-stereo-guidance``).

Correction (per conformer, never per molecule), the last resort:
- correct: kept;
- every specified centre inverted and no double bond wrong: the conformer is the mirror image
  of a correct one; reflecting it (x -> -x) fixes every centre and keeps every cis/trans;
- anything else (some centres right and some wrong, a wrong double bond, a flat centre):
  resampled, up to ``max_resamples`` rounds; resampled conformers go through the same rules.
  A molecule with several centres is never mirrored unless all of them are inverted.
Conformers still wrong after the last round are kept and flagged (their indices in the SDF
property ``stereo_wrong_conformers``), and counted in the after-correction rate: nothing is hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem

from conformer.diffusion.guidance import StereoTargets

_TETRAHEDRAL = (Chem.ChiralType.CHI_TETRAHEDRAL_CW, Chem.ChiralType.CHI_TETRAHEDRAL_CCW)
_CIS = (Chem.BondStereo.STEREOZ, Chem.BondStereo.STEREOCIS)
_TRANS = (Chem.BondStereo.STEREOE, Chem.BondStereo.STEREOTRANS)


@dataclass(frozen=True)
class StereoCheck:
    """Outcome for one conformer. Indices are atom indices (centres) or bond indices."""

    num_centres: int
    num_bonds: int
    inverted_centres: tuple[int, ...]
    flat_centres: tuple[int, ...]  # no chirality perceivable from the coordinates
    wrong_bonds: tuple[int, ...]

    @property
    def correct(self) -> bool:
        return not (self.inverted_centres or self.flat_centres or self.wrong_bonds)

    @property
    def mirror_fixes(self) -> bool:
        """True when reflecting the conformer makes it correct: every centre inverted."""
        return (self.num_centres > 0 and len(self.inverted_centres) == self.num_centres
                and not self.flat_centres and not self.wrong_bonds)


def dihedral_degrees(p0, p1, p2, p3) -> float:
    """Dihedral angle p0-p1-p2-p3 in degrees, in [-180, 180]."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / (np.linalg.norm(b1) + 1e-12)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    x = np.dot(v, w)
    y = np.dot(np.cross(b1, v), w)
    return float(np.degrees(np.arctan2(y, x)))


class StereoChecker:
    """Stereo of one input molecule (explicit hydrogens, RDKit atom order of the conformers).

    ``checker.check(positions [N, 3] Angstrom) -> StereoCheck``.
    """

    def __init__(self, mol: Chem.Mol):
        self.template = Chem.Mol(mol)
        self.template.RemoveAllConformers()
        Chem.AssignStereochemistry(self.template, cleanIt=True, force=True)
        self.centres = {atom.GetIdx(): atom.GetChiralTag() for atom in self.template.GetAtoms()
                        if atom.GetChiralTag() in _TETRAHEDRAL}
        # (bond index, [(x, begin, end, y, wants_cis) for every substituent pair x, y])
        self.bonds = []
        for bond in self.template.GetBonds():
            stereo = bond.GetStereo()
            if stereo in _CIS or stereo in _TRANS:
                a, d = list(bond.GetStereoAtoms())
                begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
                pairs = []
                for x in self._substituents(begin, end):
                    for y in self._substituents(end, begin):
                        # a pair's cis-ness flips with each non-stereo atom in it
                        wants_cis = (stereo in _CIS) == ((x == a) == (y == d))
                        pairs.append((x, begin, end, y, wants_cis))
                self.bonds.append((bond.GetIdx(), pairs))

    def _substituents(self, atom: int, across: int) -> list[int]:
        return [n.GetIdx() for n in self.template.GetAtomWithIdx(atom).GetNeighbors()
                if n.GetIdx() != across]

    @property
    def has_stereo(self) -> bool:
        return bool(self.centres or self.bonds)

    def targets(self) -> StereoTargets:
        """What sampler guidance must enforce: each centre with its first three neighbours in
        RDKit bond order (the order its chiral tag refers to) and the sign of their normalised
        signed volume, which is positive exactly for CCW; for each E/Z bond, its stereo atoms,
        the other substituents and whether the stereo atoms are cis (see guidance.py)."""
        centres, signs = [], []
        for index, tag in self.centres.items():
            atom = self.template.GetAtomWithIdx(index)
            neighbours = [bond.GetOtherAtomIdx(index) for bond in atom.GetBonds()]
            centres.append([index, *neighbours[:3]])
            signs.append(1.0 if tag == Chem.ChiralType.CHI_TETRAHEDRAL_CCW else -1.0)
        bonds, bond_signs = [], []
        for bond_index, pairs in self.bonds:
            bond = self.template.GetBondWithIdx(bond_index)
            a, d = list(bond.GetStereoAtoms())
            begin, end = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
            a_other = next((x for x in self._substituents(begin, end) if x != a), begin)
            d_other = next((y for y in self._substituents(end, begin) if y != d), end)
            bonds.append([a, a_other, begin, end, d, d_other])
            wants_cis = next(cis for x, _, _, y, cis in pairs if (x, y) == (a, d))
            bond_signs.append(1.0 if wants_cis else -1.0)
        # the bonds whose lengths guidance keeps: all but those of E/Z bonds' atoms (holding
        # those lengths while a substituent turns round a double bond can satisfy the
        # dihedral penalty with a geometry whose E/Z is still wrong)
        double_bond_atoms = {int(i) for row in bonds for i in row}
        covalent = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in self.template.GetBonds()
                    if b.GetBeginAtomIdx() not in double_bond_atoms
                    and b.GetEndAtomIdx() not in double_bond_atoms]
        return StereoTargets.build(centres, signs, bonds, bond_signs, covalent)

    def check(self, positions: np.ndarray) -> StereoCheck:
        positions = np.asarray(positions, dtype=np.float64)
        inverted, flat = [], []
        if self.centres:
            mol = Chem.Mol(self.template)
            conformer = Chem.Conformer(mol.GetNumAtoms())
            conformer.SetPositions(positions)
            mol.AddConformer(conformer, assignId=True)
            Chem.AssignStereochemistryFrom3D(mol)
            for index, wanted in self.centres.items():
                found = mol.GetAtomWithIdx(index).GetChiralTag()
                if found not in _TETRAHEDRAL:
                    flat.append(index)
                elif found != wanted:
                    inverted.append(index)
        wrong = []
        for bond_index, pairs in self.bonds:
            for x, b, c, y, wants_cis in pairs:
                angle = abs(dihedral_degrees(positions[x], positions[b], positions[c],
                                             positions[y]))
                if (angle < 90.0) != wants_cis:
                    wrong.append(bond_index)
                    break
        return StereoCheck(len(self.centres), len(self.bonds), tuple(inverted), tuple(flat),
                           tuple(wrong))


@dataclass
class StereoTally:
    """Counts over conformers of molecules that specify any stereo."""

    conformers: int = 0
    correct_before: int = 0
    correct_after: int = 0
    reflected: int = 0
    resampled: int = 0
    uncorrected: int = 0

    def add(self, other: StereoTally) -> None:
        for name in ("conformers", "correct_before", "correct_after", "reflected", "resampled",
                     "uncorrected"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def rate_before(self) -> float | None:
        return self.correct_before / self.conformers if self.conformers else None

    def rate_after(self) -> float | None:
        return self.correct_after / self.conformers if self.conformers else None


@dataclass
class CorrectedEnsemble:
    positions: np.ndarray  # [C, N, 3]
    correct_before: np.ndarray  # [C] bool, as first sampled
    correct_after: np.ndarray  # [C] bool
    tally: StereoTally = field(default_factory=StereoTally)


def correct_ensemble(checker: StereoChecker, positions: np.ndarray,
                     resample: Callable[[int], np.ndarray] | None,
                     max_resamples: int = 3) -> CorrectedEnsemble:
    """Check and correct every conformer of one molecule (see module docstring).

    positions [C, N, 3] Angstrom, centred (so the reflection is x -> -x about the centroid);
    resample(k) -> [k, N, 3] new conformers (None: no resampling).
    """
    positions = np.array(positions, dtype=np.float64, copy=True)
    count = positions.shape[0]
    if not checker.has_stereo:
        ok = np.ones(count, dtype=bool)
        return CorrectedEnsemble(positions, ok, ok.copy())
    tally = StereoTally(conformers=count)
    checks = [checker.check(p) for p in positions]
    before = np.array([c.correct for c in checks])
    after = before.copy()
    tally.correct_before = int(before.sum())
    for i, check in enumerate(checks):
        if check.mirror_fixes:
            positions[i] = -positions[i]
            after[i] = True
            tally.reflected += 1
    for _ in range(max_resamples if resample is not None else 0):
        todo = np.flatnonzero(~after)
        if todo.size == 0:
            break
        fresh = resample(int(todo.size))
        for i, candidate in zip(todo, fresh, strict=True):
            check = checker.check(candidate)
            if check.correct:
                positions[i], after[i] = candidate, True
                tally.resampled += 1
            elif check.mirror_fixes:
                positions[i], after[i] = -np.asarray(candidate), True
                tally.resampled += 1
    tally.correct_after = int(after.sum())
    tally.uncorrected = count - tally.correct_after
    return CorrectedEnsemble(positions, before, after, tally)
