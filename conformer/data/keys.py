"""Every array key of a molecule record and of a batch, declared once with shape, dtype and unit.

Notation: N atoms (hydrogens included, RDKit atom order), E directed bond edges (each bond twice),
C conformers, B molecules in a batch. Coordinates are in Angstrom.

Record (one molecule, numpy, written by ``conformer prepare`` and read by the DataModule):
    ATOM_FEATURES      int64  [N, len(ATOM_FEATURE_CARDINALITIES)]  categorical indices
    ATOMIC_NUMBERS     int64  [N]
    BOND_INDEX         int64  [2, E]   (source, target); both directions of every bond
    BOND_FEATURES      int64  [E, len(BOND_FEATURE_CARDINALITIES)]  categorical indices
    CIP_NEIGHBOUR_RANK int64  [E]   per edge source -> target: the source's CIP priority among
                                    the target's neighbours (1 highest .. 4) when the target is
                                    an R/S centre, else 0 (``conformer.data.features``)
    POSITIONS          float32 [C, N, 3]  Angstrom; conformers sorted by Boltzmann weight, desc
    BOLTZMANN_WEIGHTS  float32 [C]
    SMILES             str    canonical isomeric SMILES of the molecule (with explicit H removed)
    GEOM_KEY           str    the molecule's key in the GEOM summary file
    MOLBLOCK           str    V2000/V3000 molblock of the molecule (H explicit, no coordinates
                              needed) so the RDKit graph can be rebuilt without re-parsing SMILES

Batch (torch, built by the collate function; molecules concatenated):
    ATOM_FEATURES, ATOMIC_NUMBERS, BOND_FEATURES, CIP_NEIGHBOUR_RANK as above, concatenated
    BOND_INDEX         int64  [2, E_total]  offset into the concatenated atoms
    POS                float32 [N_total, 3]  one conformer per molecule
    BATCH              int64  [N_total]  molecule index of each atom
    NUM_GRAPHS         int    B
"""

ATOM_FEATURES = "atom_features"
ATOMIC_NUMBERS = "atomic_numbers"
BOND_INDEX = "bond_index"
BOND_FEATURES = "bond_features"
CIP_NEIGHBOUR_RANK = "cip_neighbour_rank"
POSITIONS = "positions"
BOLTZMANN_WEIGHTS = "boltzmann_weights"
SMILES = "smiles"
GEOM_KEY = "geom_key"
MOLBLOCK = "molblock"

POS = "pos"
BATCH = "batch"
NUM_GRAPHS = "num_graphs"

RECORD_ARRAY_KEYS = (ATOM_FEATURES, ATOMIC_NUMBERS, BOND_INDEX, BOND_FEATURES, POSITIONS,
                     BOLTZMANN_WEIGHTS, CIP_NEIGHBOUR_RANK)
RECORD_STRING_KEYS = (SMILES, GEOM_KEY, MOLBLOCK)
