"""Conformer generation, split along its jobs.

- ``inputs``: molecules from SMILES/CSV files or Python objects (``InputLine``), prepared with
  explicit hydrogens;
- ``options``: the settings of a run (``GenerateOptions``);
- ``domain``: the model's supported atoms (checked before) and bond lengths (checked after);
- ``sampler``: the devices, the loaded model and its sampler, the RDKit methods, seeding;
- ``ensemble``: one molecule from input to a stereo-checked ensemble (``MoleculeGenerator``),
  the core shared by the CLI and the Python API (``conformer.generate``);
- ``runner``: the CLI's loop (``generate_file``): SDF and failures file, resume, summary.
"""

from conformer.generation.ensemble import GeneratedMolecule, MoleculeGenerator, ensemble_mol
from conformer.generation.inputs import (
    InputLine,
    MoleculeError,
    lines_from_molecules,
    prepare_molecule,
    read_inputs,
)
from conformer.generation.options import DEFAULT_NUM_CONFS, METHODS, GenerateOptions
from conformer.generation.runner import GenerateSummary, failures_path, generate_file
from conformer.generation.sampler import (
    ConformerModel,
    ModelSampler,
    molecule_seed,
    rdkit_conformers,
    resolve_device,
)

__all__ = [
    "DEFAULT_NUM_CONFS", "METHODS", "ConformerModel", "GenerateOptions", "GenerateSummary",
    "GeneratedMolecule", "InputLine", "ModelSampler", "MoleculeError", "MoleculeGenerator",
    "ensemble_mol", "failures_path", "generate_file", "lines_from_molecules", "molecule_seed",
    "prepare_molecule", "rdkit_conformers", "read_inputs", "resolve_device",
]
