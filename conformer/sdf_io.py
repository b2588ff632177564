"""The SDF layout written by ``conformer generate`` and read by ``conformer evaluate``.

One SDF record per conformer. Every record carries these properties:

- ``name``: the molecule's name (group key for evaluation),
- ``smiles``: the SMILES the conformers were generated from,
- ``input_line``: 1-based line number of the molecule in the input file (resume key),
- ``conformer``: 0-based index of the conformer within its molecule,
- ``n_conformers``: how many records this molecule has in total (the completion marker),

plus any extra properties the caller passes (for example ``method`` or ``seed``) and each
conformer's own properties (``mmff94_energy``). Bonds are written in Kekulé form.

Resume without a sidecar: a molecule is complete when the file holds ``n_conformers`` records
with its ``input_line``. Records are flushed to disk after each molecule, so a killed run loses
at most the molecule in progress; reopening with ``append=True`` first cuts off the records
of a trailing, incomplete molecule (and any half-written record), then appends. A molecule for which the
generator produced no conformer has no record here; generators list it in their failures file.
"""

from __future__ import annotations

import gzip
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rdkit import Chem

from conformer.errors import UserInputError

RECORD_END = b"$$$$"
_TERMINATOR = re.compile(rb"^\$\$\$\$\n", re.M)  # a whole line: a title may hold "$$$$"
REQUIRED_PROPS = ("name", "smiles", "input_line", "conformer", "n_conformers")


def open_binary(path: Path):
    """The file opened for binary reading, gunzipped when its name ends in .gz."""
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _record_prop(record: bytes, key: str) -> str | None:
    match = re.search(rb"^>\s*<" + re.escape(key.encode()) + rb">[^\n]*\n([^\n]*)", record, re.M)
    return match.group(1).decode().strip() if match else None


def _terminated_records(data: bytes) -> Iterator[tuple[bytes, int]]:
    """``(record, end offset)`` for every record of ``data`` that ends in ``$$$$`` and a
    newline; a trailing record cut before its terminator (a killed run) is not one."""
    offset = 0
    for match in _TERMINATOR.finditer(data):
        yield data[offset:match.end()], match.end()
        offset = match.end()


def _truncate_to_complete_molecules(path: Path) -> None:
    """Cut a trailing, incompletely written molecule (a run killed while writing it).

    Keeps every byte up to the last record that completes its molecule (its ``input_line`` has
    ``n_conformers`` records by then), so a resumed run neither duplicates nor half-writes one.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    keep, counts = 0, defaultdict(int)
    for record, record_end in _terminated_records(data):
        line, total = _record_prop(record, "input_line"), _record_prop(record, "n_conformers")
        if line is not None and total is not None:
            counts[line] += 1
            if counts[line] >= int(total):
                keep = record_end
        else:  # a record not written by this class: keep it as it is
            keep = record_end
    if keep != len(data):
        with open(path, "r+b") as handle:
            handle.truncate(keep)


class ConformerSDFWriter:
    """Write conformers one molecule at a time; usable as a context manager.

    ``append=False`` starts a new file (overwrites); ``append=True`` continues an existing one
    after dropping a trailing partial record. Gzip output is not supported (appending to gzip
    is not crash-safe).
    """

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        if str(self.path).endswith(".gz"):
            raise UserInputError(f"{self.path}: write a plain .sdf (gzip cannot be resumed)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists():
            _truncate_to_complete_molecules(self.path)
        self._handle = open(self.path, "a" if append else "w")

    def write_molecule(self, mol: Chem.Mol, name: str, smiles: str, input_line: int,
                       extra_props: Mapping[str, Any] | None = None,
                       conf_ids: list[int] | None = None) -> int:
        """Write every conformer of ``mol`` (or those in ``conf_ids``) and flush.

        Coordinates are written in Angstrom as stored in the conformers. Returns the number of
        records written (0 writes nothing; the molecule then counts as not completed).
        """
        ids = [c.GetId() for c in mol.GetConformers()] if conf_ids is None else list(conf_ids)
        if not ids:
            return 0
        blocks = []
        for index, conf_id in enumerate(ids):
            record = Chem.Mol(mol)
            record.RemoveAllConformers()
            record.AddConformer(Chem.Conformer(mol.GetConformer(conf_id)), assignId=True)
            record.SetProp("_Name", _one_line(name))
            props: dict[str, Any] = {"name": name, "smiles": smiles, "input_line": int(input_line),
                                     "conformer": index, "n_conformers": len(ids)}
            props.update(extra_props or {})
            # the conformer's own properties (its MMFF94 energy)
            props.update(mol.GetConformer(conf_id).GetPropsAsDict(includePrivate=False,
                                                                  includeComputed=False))
            blocks.append(_mol_block_with_props(record, props))
        self._handle.write("".join(blocks))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return len(ids)

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> ConformerSDFWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _one_line(value: Any) -> str:
    """``value`` as one line: a line break in a title or property value would end it early
    and make the record unreadable (and its molecule never count as done)."""
    return " ".join(str(value).splitlines())


def _mol_block_with_props(mol: Chem.Mol, props: Mapping[str, Any]) -> str:
    try:  # Kekulé bonds: SDF bond type 4 (aromatic) is meant for queries, not structures
        block = Chem.MolToMolBlock(mol, kekulize=True)
    except (RuntimeError, ValueError):  # Chem.KekulizeException is a ValueError
        block = Chem.MolToMolBlock(mol, kekulize=False)
    lines = [block]
    for key, value in props.items():
        lines.append(f">  <{key}>\n{_one_line(value)}\n\n")
    lines.append("$$$$\n")
    return "".join(lines)


def iter_sdf(path: str | Path, remove_hs: bool = False,
             sanitize: bool = True) -> Iterator[tuple[int, Chem.Mol | None]]:
    """Yield ``(record_index, mol or None)`` for every record of a .sdf or .sdf.gz file."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    with open_binary(path) as handle:
        supplier = Chem.ForwardSDMolSupplier(handle, removeHs=remove_hs, sanitize=sanitize)
        for index, mol in enumerate(supplier):
            yield index, mol


def completed_input_lines(path: str | Path) -> set[int]:
    """Input lines whose ``n_conformers`` records are all present in ``path`` (empty if absent).

    Only records ending in ``$$$$`` count: a record cut mid-way (RDKit would still parse it)
    is removed when the writer reopens the file, so counting it would lose its molecule.
    """
    path = Path(path)
    if not path.exists():
        return set()
    with open(path, "rb") as handle:
        data = handle.read()
    counts: dict[int, int] = defaultdict(int)
    expected: dict[int, int] = {}
    for record, _ in _terminated_records(data):
        line, total = _record_prop(record, "input_line"), _record_prop(record, "n_conformers")
        if line is None or total is None:
            continue
        try:
            line_number, count = int(line), int(total)
        except ValueError:
            continue
        counts[line_number] += 1
        expected[line_number] = count
    return {line for line, n in counts.items() if n >= expected[line]}


def read_conformer_groups(path: str | Path, key: str = "name", remove_hs: bool = False,
                          errors: list[dict] | None = None) -> dict[str, list[Chem.Mol]]:
    """Group the records of an SDF by property ``key`` (records keep their file order).

    An unreadable record, or one without ``key``, raises :class:`UserInputError` naming the
    record; when an ``errors`` list is given, it is appended there instead (``{"record": n,
    "reason": ...}``, 1-based) and reading goes on, so callers can list it as a failure.
    """
    groups: dict[str, list[Chem.Mol]] = defaultdict(list)
    for index, mol in iter_sdf(path, remove_hs=remove_hs):
        reason = None
        if mol is None:
            reason = "cannot be read by RDKit"
        elif not mol.HasProp(key):
            reason = f"has no property '{key}'"
        if reason is not None:
            if errors is None:
                raise UserInputError(f"{path}: record {index + 1} {reason}")
            errors.append({"record": index + 1, "reason": f"{path}: record {reason}"})
            continue
        groups[mol.GetProp(key)].append(mol)
    return dict(groups)
