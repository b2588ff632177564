"""Molecules to generate: input files (SMILES or CSV) or Python objects, as ``InputLine``s.

Every molecule carries the line number it is accounted by: its line in the input file (a CSV
header is line 1), or its 1-based position in the list given to ``conformer.generate``. The
number also seeds the molecule's random stream (see ``conformer.generation.sampler``).
"""

from __future__ import annotations

import csv
import gzip
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem
from rdkit.rdBase import BlockLogs

from conformer.errors import UserInputError


@dataclass
class InputLine:
    """One molecule to generate. line_number counts from 1 over the file's lines (a CSV
    header is line 1) or over the list given to the API. text is the input as given; smiles
    the one generated from. mol, when set, is the molecule itself (an RDKit Mol handed to the
    API or an SDF record: its atoms, stereo tags and hydrogens are used instead of parsing
    ``smiles``). For an SDF input, line_number is the record's number (1-based)."""

    line_number: int
    text: str
    smiles: str
    name: str
    input_smiles: str
    n_conformers: int | None = None
    mol: Chem.Mol | None = None
    problem: str | None = None  # why this entry cannot be a molecule (an unreadable record)


SDF_SUFFIXES = (".sdf", ".sdf.gz", ".mol")


def read_inputs(path: str | Path) -> Iterator[InputLine]:
    """Molecules of a ``.smi``/``.txt`` (SMILES, optional name; blank or tab separated; ``#``
    comments and blank lines skipped), ``.csv`` (``smiles`` column; optional ``name``,
    ``n_conformers``, ``corrected_smiles`` — generated from when present and non-empty) or
    ``.sdf``/``.sdf.gz``/``.mol`` file (one molecule per record, numbered 1, 2, ... by record:
    its atoms, hydrogens and stereo, from the 3D coordinates or wedges, and its title as
    the name).

    A SMILES or CSV file that is not UTF-8 text (a binary file) or that holds SDF/MOL records
    raises UserInputError before any molecule is read.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"input {path}: no such file")
    name = path.name.lower()
    if name.endswith(SDF_SUFFIXES):
        yield from _read_sdf(path)
        return
    _check_text_input(path)
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path)
    else:
        yield from _read_smi(path)


_SDF_MARKERS = re.compile(rb"^(M  END|\$\$\$\$|.{33,39}V[23]000)\s*$", re.M)


def _check_text_input(path: Path) -> None:
    """UserInputError unless ``path`` is UTF-8 text without SDF/MOL records."""
    data = path.read_bytes()
    where = data.find(b"\0")
    if where < 0:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            where = error.start
    if where >= 0:
        raise UserInputError(f"input {path}: not a text file (byte 0x{data[where]:02x} at "
                             f"offset {where}); give SMILES or CSV text, or an .sdf file")
    marker = _SDF_MARKERS.search(data)
    if marker is not None:
        line = data.count(b"\n", 0, marker.start()) + 1
        raise UserInputError(f"input {path}: line {line} is SDF/MOL syntax, not SMILES; "
                             "to read SDF records, name the file .sdf or .sdf.gz")


def _read_sdf(path: Path) -> Iterator[InputLine]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            supplier = Chem.ForwardSDMolSupplier(handle, removeHs=False, sanitize=True)
            with BlockLogs():  # an unreadable record is reported in the failures file
                for number, mol in enumerate(supplier, start=1):
                    yield _sdf_line(number, mol)
    except (OSError, EOFError, RuntimeError) as error:  # gzip/RDKit on a damaged file
        raise UserInputError(f"input {path}: cannot be read as SDF ({error})") from None


def _sdf_line(number: int, mol: Chem.Mol | None) -> InputLine:
    if mol is None:
        return InputLine(number, f"record {number}", "", f"record{number}", "",
                         problem="SDF record RDKit cannot read")
    name = next((clean_name(mol.GetProp(key)) for key in ("_Name", "name")
                 if mol.HasProp(key) and clean_name(mol.GetProp(key))), f"record{number}")
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    return InputLine(number, smiles, smiles, name, smiles, mol=Chem.Mol(mol))


# Only ASCII blanks separate a SMILES from its name: any other whitespace (a non-breaking
# space pasted from a web page, U+00A0) inside a SMILES makes it an invalid SMILES, reported
# as such, instead of silently cutting ``C\u00a0CO`` down to methane.
_SEPARATORS = " \t"


def clean_name(name: str) -> str:
    """``name`` fit for an SDF title line and property value: control characters (newlines,
    tabs, NUL) become spaces, runs of whitespace one space; a name that would read as the
    SDF record terminator ``$$$$`` is quoted. An empty result stays empty."""
    chars = [" " if unicodedata.category(c).startswith("C") else c for c in name]
    cleaned = " ".join("".join(chars).split())
    return f"'{cleaned}'" if cleaned.startswith("$$$$") else cleaned


def _read_smi(path: Path) -> Iterator[InputLine]:
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.rstrip("\r\n")
            stripped = text.strip(_SEPARATORS)
            if not stripped or stripped.startswith("#"):
                continue
            cut = min((i for i in (stripped.find(c) for c in _SEPARATORS) if i >= 0),
                      default=len(stripped))
            smiles = stripped[:cut]
            name = clean_name(stripped[cut:]) or f"line{number}"
            yield InputLine(number, text, smiles, name, smiles)


def _read_csv(path: Path) -> Iterator[InputLine]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        fields = [f.strip() for f in header]
        if "smiles" not in fields:
            raise UserInputError(f"input {path}: CSV has no 'smiles' column "
                                 f"(columns: {', '.join(fields) or 'none'})")
        previous_end = reader.line_num
        for values in reader:
            # a row's number is the physical line it starts on: blank rows and quoted fields
            # spanning several lines count, so failures.csv points at the right line
            number, previous_end = previous_end + 1, reader.line_num
            if not values:
                continue
            row = dict(zip(fields, values, strict=False))
            text = ",".join(values)
            smiles = (row.get("smiles") or "").strip(_SEPARATORS)
            corrected = (row.get("corrected_smiles") or "").strip(_SEPARATORS)
            name = clean_name(row.get("name") or "") or f"line{number}"
            count_text = (row.get("n_conformers") or "").strip()
            try:
                count = int(float(count_text)) if count_text else None
            except ValueError:
                count = -1  # reported as a failure of this line, not of the file
            yield InputLine(number, text, corrected or smiles, name, smiles, count)


def lines_from_molecules(molecules: Iterable[str | Chem.Mol]) -> list[InputLine]:
    """The API's inputs as ``InputLine``s numbered 1, 2, ... in the given order.

    A string is a SMILES (named ``mol<k>``, k its 1-based position); a Mol keeps its atoms,
    stereo and name (``_Name``, else ``name`` property, else ``mol<k>``). Anything else raises
    UserInputError naming the position and the type.
    """
    lines = []
    for number, item in enumerate(molecules, start=1):
        if isinstance(item, str):
            smiles = item.strip()
            lines.append(InputLine(number, item, smiles, f"mol{number}", smiles))
        elif isinstance(item, Chem.Mol):
            name = next((clean_name(item.GetProp(key)) for key in ("_Name", "name")
                         if item.HasProp(key) and clean_name(item.GetProp(key))),
                        f"mol{number}")
            try:
                smiles = Chem.MolToSmiles(Chem.RemoveHs(item, sanitize=False))
            except (RuntimeError, ValueError):  # an unsanitizable Mol fails in prepare_molecule
                smiles = ""
            lines.append(InputLine(number, smiles, smiles, name, smiles, mol=Chem.Mol(item)))
        else:
            raise UserInputError(f"molecules[{number - 1}]: expected a SMILES string or an "
                                 f"RDKit Mol, got {type(item).__name__}")
    return lines


class MoleculeError(ValueError):
    """This input line cannot be processed (the message is the reason)."""


def prepare_molecule(line: InputLine, max_atoms: int) -> Chem.Mol:
    """The RDKit molecule with explicit hydrogens, or MoleculeError with the reason.

    From ``line.mol`` when set (its atom order kept; missing hydrogens added after the heavy
    atoms), else parsed from ``line.smiles``.
    """
    if line.problem is not None:
        raise MoleculeError(line.problem)
    if line.n_conformers is not None and line.n_conformers < 0:
        raise MoleculeError("n_conformers is not a non-negative integer")
    if line.mol is not None:
        mol = Chem.Mol(line.mol)
        mol.RemoveAllConformers()
        if mol.GetNumAtoms() == 0:
            raise MoleculeError("empty molecule")
        try:
            Chem.SanitizeMol(mol)
        except (RuntimeError, ValueError) as error:
            raise MoleculeError(f"RDKit cannot sanitize the molecule ({error})") from error
    else:
        if not line.smiles:
            raise MoleculeError("empty SMILES")
        odd = next((c for c in line.smiles if not c.isascii() or not c.isprintable()), None)
        if odd is not None:
            raise MoleculeError(f"invalid SMILES (contains U+{ord(odd):04X}, "
                                f"{unicodedata.name(odd, 'a control character')})")
        mol = Chem.MolFromSmiles(line.smiles)
        if mol is None:
            raise MoleculeError("invalid SMILES (RDKit cannot parse it)")
    if len(Chem.GetMolFrags(mol)) > 1:
        raise MoleculeError("disconnected fragments are not supported (strip salts/solvents)")
    mol = Chem.AddHs(mol)
    if mol.GetNumAtoms() > max_atoms:
        raise MoleculeError(f"too many atoms ({mol.GetNumAtoms()} with hydrogens; "
                            f"limit {max_atoms})")
    if mol.GetNumAtoms() < 2:
        raise MoleculeError("a single atom has no conformation")
    return mol
