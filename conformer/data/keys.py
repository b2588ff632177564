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

Graph (torch_geometric ``Data`` per molecule, ``conformer.data.records.MoleculeGraph``): the
record's arrays as torch tensors under the field names PyG models expect (GRAPH_FIELDS):
    x = ATOM_FEATURES, z = ATOMIC_NUMBERS, edge_index = BOND_INDEX, edge_attr = BOND_FEATURES;
a record also holds POSITIONS, BOLTZMANN_WEIGHTS and the strings; a training or generation item
holds instead POS float32 [N, 3] (one conformer). ``graph[ATOM_FEATURES]`` reads ``graph.x``:
the record key names keep working on graphs and batches.

Batch (torch_geometric ``Batch``, built by ``conformer.data.batching.collate_molecules``):
    x, z, edge_attr     as above, concatenated (and CIP_NEIGHBOUR_RANK, per edge, when present)
    edge_index         int64  [2, E_total]  offset into the concatenated atoms
    pos                float32 [N_total, 3]  one conformer per molecule
    batch              int64  [N_total]  molecule index of each atom (sorted)
    num_graphs         int    B
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

X = "x"
Z = "z"
EDGE_INDEX = "edge_index"
EDGE_ATTR = "edge_attr"
GRAPH_FIELDS = {ATOM_FEATURES: X, ATOMIC_NUMBERS: Z, BOND_INDEX: EDGE_INDEX, BOND_FEATURES: EDGE_ATTR}

RECORD_ARRAY_KEYS = (ATOM_FEATURES, ATOMIC_NUMBERS, BOND_INDEX, BOND_FEATURES, POSITIONS,
                     BOLTZMANN_WEIGHTS, CIP_NEIGHBOUR_RANK)
RECORD_STRING_KEYS = (SMILES, GEOM_KEY, MOLBLOCK)
# written by `conformer prepare` today but absent from records of an older FEATURE_VERSION
# (cip_neighbour_rank came with version 2): read when present, so an older cache still serves
# every model that does not use them
OPTIONAL_RECORD_ARRAY_KEYS = (CIP_NEIGHBOUR_RANK,)
