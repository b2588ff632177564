"""A fast SDF reader for ``conformer evaluate``: one RDKit parse per molecule, not per record.

The conformers of one molecule share their topology: every record of a run of conformers has
the same counts line, the same atom lines apart from the coordinate columns, the same bond and
``M`` lines. :func:`read_record_groups` parses the first record of such a run with RDKit (the
*template*) and, for each following record, only checks that its topology bytes equal the
template's and reads its coordinates (numpy, from the fixed-width V2000 columns) and its data
items. A record that differs in any way (another molecule, a changed charge or bond, a
coordinate field that is not plain ``%10.4f``-style text, a data item RDKit might read
differently) is parsed by RDKit on its own, exactly as :func:`conformer.sdf_io.iter_sdf` would;
a file whose record boundaries are not plain (carriage returns, a header line holding
``$$$$``) is read by RDKit as a whole. The result of RDKit's reader and this one are the same
records, names, properties and coordinates (equal to the last printed digit: both round the
same decimal text to the nearest double).

Records are held in :class:`ConformerRecords`, a sequence of RDKit molecules that builds a
record's :class:`~rdkit.Chem.Mol` only when asked for it (by RDKit, from the record's own text,
so stereo perceived from its coordinates is the record's own) and that hands the RMSD engine one
multi-conformer molecule per run of records (:meth:`ConformerRecords.engine_molecules`).
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from conformer.errors import UserInputError
from conformer.evaluate.rmsd.symmetry import ConformerArray
from conformer.sdf_io import iter_sdf, open_binary

_RECORD_END = b"$$$$\n"  # as conformer.sdf_io: a record ends at a whole "$$$$" line
# A data header RDKit reads as the label between the first '<' and the last '>' (the line
# ends with it); other header forms go to RDKit.
# One data item: a header whose label RDKit takes between the first '<' and the last '>', one
# value line without surrounding blanks, an empty line (or the end). Other forms go to RDKit.
_ITEM_TEXT = r">[^<\n]*<([^\n]*)>[^>\n]*\n([^\s>](?:[^\n]*[^\s])?)\n(?:\n|\Z)"
_DATA_ITEM = re.compile(_ITEM_TEXT)
_DATA_ITEMS = re.compile(r"\n*(?:" + _ITEM_TEXT.replace("(", "(?:").replace("(?:?:", "(?:")
                         + r"\n*)*")
_COORD_COLUMNS = 30  # x, y, z: three 10-character fields at the start of a V2000 atom line
_END_LINE = b"M  END\n"
_BOND_STEREO = slice(9, 12)  # columns of a V2000 bond line's stereo field



class _Block:
    """A run of records sharing one topology: RDKit's parse of the first (``template``), the
    atom lines' fixed length, and after :func:`_finish_blocks` every row's coordinates
    ``coords`` (n_rows, n_atoms, 3) float64 Angstrom (row 0: the template's)."""

    __slots__ = ("template", "counts_line", "dimension", "line_length", "n_atoms", "atom_bytes",
                 "atoms_span", "bond_bytes", "bond_texts", "tail", "after_atoms", "after_length",
                 "offsets", "coords", "item_labels", "items_pattern")

    def __init__(self, template: Chem.Mol, counts: bytes, dimension: bytes,
                 atom_bytes: np.ndarray, bond_bytes: np.ndarray, tail: bytes, offset: int):
        self.template = template
        self.counts_line, self.dimension, self.tail = counts + b"\n", dimension, tail
        self.n_atoms, self.line_length = atom_bytes.shape[0], atom_bytes.shape[1] - 1
        self.atom_bytes = atom_bytes  # (n_atoms, line_length + 1) uint8, newline included
        self.bond_bytes = bond_bytes  # (n_bonds, bond line length + 1) uint8
        self.bond_texts = {bond_bytes.tobytes()}  # bond blocks known to match
        self.atoms_span = atom_bytes.size  # bytes of the atom lines
        # bond lines, the lines up to "M  END" and that line, as one text (and the other
        # texts known to match: wedges may differ, see _fast_entry)
        self.after_atoms = {bond_bytes.tobytes() + tail + _END_LINE}
        self.after_length = bond_bytes.size + len(tail) + len(_END_LINE)
        self.offsets = [offset]  # start of each row's atom block in the file
        self.coords: np.ndarray | None = None
        # the data-item labels of the block's first fast-read record and their regex
        self.item_labels: tuple[str, ...] = ()
        self.items_pattern: re.Pattern | None = None


class _Entry:
    """One record: its data items (``props``, with the title as ``_Name``; None when the
    molecule ``mol`` carries them), its place in a block, its text (for a lazy RDKit parse)."""

    __slots__ = ("props", "block", "row", "text", "mol")

    def __init__(self, props=None, block=None, row=0, text=None, mol=None):
        self.props, self.block, self.row, self.text, self.mol = props, block, row, text, mol

    def get(self, key: str) -> str | None:
        if self.props is not None:
            return self.props.get(key)
        return self.mol.GetProp(key) if self.mol.HasProp(key) else None


class ConformerRecords(Sequence):
    """The records of one molecule group, as a read-only sequence of RDKit molecules.

    Indexing or iterating builds each record's molecule with RDKit (cached); :meth:`prop`,
    :meth:`engine_molecules`, :meth:`digest` and :meth:`select` never do.
    """

    __slots__ = ("_entries",)

    def __init__(self, entries: list[_Entry]):
        self._entries = entries

    @classmethod
    def from_molecules(cls, mols) -> ConformerRecords:
        """Wrap molecules already in memory (each keeps its own conformers)."""
        if isinstance(mols, ConformerRecords):
            return mols
        return cls([_Entry(mol=mol) for mol in mols])

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._molecule(entry) for entry in self._entries[index]]
        return self._molecule(self._entries[index])

    def __iter__(self) -> Iterator[Chem.Mol]:
        return (self._molecule(entry) for entry in self._entries)

    @classmethod
    def concatenate(cls, parts) -> ConformerRecords:
        """The records of ``parts`` (records or lists of molecules), in order."""
        return cls([entry for part in parts for entry in cls.from_molecules(part)._entries])

    @staticmethod
    def _molecule(entry: _Entry) -> Chem.Mol:
        if entry.mol is None:
            entry.mol = _rdkit_record(entry.text)
        return entry.mol

    def prop(self, index: int, key: str) -> str | None:
        """Record ``index``'s property ``key`` as RDKit would give it (``_Name``: the title),
        None when absent."""
        return self._entries[index].get(key)

    def props(self, key: str) -> list[str | None]:
        """:meth:`prop` of every record."""
        # the fast reader's records hold a dict: read it here (no method call per record)
        return [props.get(key) if (props := entry.props) is not None else entry.get(key)
                for entry in self._entries]

    def select(self, indices) -> ConformerRecords:
        """The records at ``indices``, in that order."""
        return ConformerRecords([self._entries[i] for i in indices])

    def engine_molecules(self) -> list[Chem.Mol | ConformerArray]:
        """The records as the RMSD engine reads them: each run of consecutive records from
        one block as one :class:`~conformer.evaluate.rmsd.ConformerArray` (the block's
        template and the run's coordinates, (n_records, n_atoms, 3), in order), other records
        as RDKit molecules. Entry j of the result (counting an array's rows) is record j."""
        out: list[Chem.Mol | ConformerArray] = []
        entries, i = self._entries, 0
        while i < len(entries):
            block = entries[i].block
            if block is None:
                out.append(self._molecule(entries[i]))
                i += 1
                continue
            j, first_row = i + 1, entries[i].row
            while j < len(entries) and entries[j].block is block:
                j += 1
            rows = [entry.row for entry in entries[i:j]]
            consecutive = rows == list(range(first_row, first_row + j - i))
            # a view when the run is the block's rows in order (the common case): the engine
            # copies what it reads, and the block's arrays are never written after reading
            coords = block.coords[first_row:first_row + j - i] if consecutive \
                else block.coords[rows]
            out.append(ConformerArray(block.template, coords))
            i = j
        return out

    def digest(self, update) -> None:
        """Feed what identifies these records to ``update`` (a hash's update method): a record
        read from a file by its text (which fixes everything read from it), a molecule given
        in memory by its binary form (topology, float64 coordinates, the file's properties)."""
        # one update of the joined texts: the same digest as one update per record (a hash
        # of the concatenation), at a fraction of the calls
        update(b"".join([entry.text if entry.text is not None
                         else entry.mol.ToBinary(_BINARY_OPTIONS) for entry in self._entries]))


_P = Chem.PropertyPickleOptions
# the file's properties and float64 coordinates, not computed ones (ring info, invariants),
# which RDKit caches on a molecule as the RMSD engine reads it
_BINARY_OPTIONS = _P.MolProps | _P.AtomProps | _P.BondProps | _P.CoordsAsDouble


def _rdkit_record(text: bytes) -> Chem.Mol | None:
    """RDKit's reading of one record, as :func:`conformer.sdf_io.iter_sdf` reads it."""
    supplier = Chem.ForwardSDMolSupplier(io.BytesIO(text), removeHs=False, sanitize=True)
    return next(iter(supplier), None)


def _data_items(block: _Block, data: bytes, start: int, stop: int) -> dict[str, str] | None:
    """The data items of ``data[start:stop]`` (after ``M  END``), or None when any of them
    is not the plain one-line form (RDKit then reads the record). A block's records usually
    carry the same labels in the same order: after the first such record, one regex made for
    those labels (:func:`_items_pattern`) reads the items in one match; a record it does not
    match goes through the general check."""
    try:
        text = data[start:stop].decode()
    except UnicodeDecodeError:
        return None
    pattern = block.items_pattern
    if pattern is not None:
        match = pattern.fullmatch(text)
        if match is not None:
            return dict(zip(block.item_labels, match.groups(), strict=True))
    if not _DATA_ITEMS.fullmatch(text):
        return None  # empty, multi-line or padded values, other headers: RDKit's rules
    pairs = _DATA_ITEM.findall(text)
    if pattern is None:
        block.item_labels = tuple(label for label, _ in pairs)
        block.items_pattern = _items_pattern(block.item_labels)
    return dict(pairs)


@functools.lru_cache(maxsize=256)
def _items_pattern(labels: tuple[str, ...]) -> re.Pattern:
    """A regex whose full match is a data-item text that :data:`_DATA_ITEMS` fully matches
    and whose items carry exactly ``labels``, in order; its groups are the values, the same
    as :data:`_DATA_ITEM`'s. Each item is :data:`_ITEM_TEXT` with the label written out: the
    header's first '<' is followed by the label and a '>' after which the line holds no '>',
    so RDKit's label (first '<' to last '>') is that label. Compiled once per label tuple."""
    items = [_ITEM_TEXT.replace("<([^\\n]*)>", "<" + re.escape(label) + ">", 1)
             for label in labels]
    return re.compile(r"\n*" + r"\n*".join(items) + r"\n*")


# place values of the integer digits (columns 0-4) and of the decimals (columns 6-9); each
# partial sum is an integer below 2^24, exact in float32
_WHOLE_PLACES = np.array([1e4, 1e3, 1e2, 1e1, 1.0], np.float32)
_DECIMAL_PLACES = np.array([1e3, 1e2, 1e1, 1.0], np.float32)
# bytes minus ord("0"), as uint8 (wrapping): digits 0-9, and these
_BLANK, _MINUS, _POINT = (np.uint8((ord(c) - 48) % 256) for c in " -.")


def _parse_fixed_coordinates(chars: np.ndarray) -> np.ndarray | None:
    """Values of 10-character fields ``chars`` (..., 10) uint8 written as ``%10.4f`` (leading
    blanks, an optional minus, digits, the point at column 5, four decimals), flat in the
    fields' order; None when any field has another form (see :func:`_column_values`). Works
    column by column on a transposed copy: numpy's operations on the (N, 10) layout's short
    strided rows cost several times more."""
    return _column_values(np.subtract(np.moveaxis(chars, -1, 0), np.uint8(48),
                                      order="C").reshape(10, -1))


def _column_values(columns: np.ndarray) -> np.ndarray | None:
    """:func:`_parse_fixed_coordinates` of fields given column by column: ``columns`` (10, N)
    uint8 (any strides), each field's bytes minus ord("0") (wrapping); not modified. Exact: the
    integer digits and the decimals each sum exactly (integers below 2^24 in float32), the
    integer mantissa ``whole * 10^4 + decimals`` is exact in float64 (below 2^53), and its
    division by 10^4 rounds once, to the double nearest the decimal text, as strtod does."""
    is_digit = columns < 10
    if not (np.all(columns[5] == _POINT) and np.all(is_digit[6:]) and np.all(is_digit[4])):
        return None
    head, head_digit = columns[:4], is_digit[:4]
    minus = head == _MINUS
    if not np.all(head_digit | minus | (head == _BLANK)):
        return None
    # blanks, then at most one minus, then digits: ranks 0, 1, 2 never decrease, no "--"
    rank = head_digit * np.uint8(2) + minus
    if np.any(rank[1:] < rank[:-1]) or np.any(minus[1:] & minus[:-1]):
        return None
    whole = _WHOLE_PLACES[:4] @ (head * head_digit).astype(np.float32)  # blanks, minus: 0
    whole += columns[4]
    magnitude = whole.astype(np.float64)
    magnitude *= 1e4  # exact
    magnitude += _DECIMAL_PLACES @ columns[6:].astype(np.float32)  # exact
    magnitude /= 1e4  # one rounding
    negative = minus[0] | minus[1] | minus[2] | minus[3]
    np.negative(magnitude, out=magnitude, where=negative)  # "-0.0000" is -0.0, as strtod
    return magnitude


def _finish_blocks(blocks: list[_Block], data: bytes) -> list[np.ndarray]:
    """Fill every block's ``coords``; returns per block a bool per row: True where the row's
    atom lines equal the template's outside the coordinate columns and its coordinates are
    plain ``%10.4f`` text. The coordinate text of all blocks is parsed in one pass: each
    block's coordinate columns are written, transposed, straight into one (10, N) array."""
    same_rows, fields, total = [], [], 0
    for block in blocks:
        n_atoms, width = block.n_atoms, block.line_length + 1
        span = n_atoms * width  # the bond lines were checked by _fast_entry
        if len(block.offsets) == 1:
            rows = block.atom_bytes[None]
        else:
            rows = np.frombuffer(b"".join([data[o:o + span] for o in block.offsets]),
                                 dtype=np.uint8).reshape(len(block.offsets), n_atoms, width)
        same = np.all(rows[:, :, _COORD_COLUMNS:] == block.atom_bytes[None, :, _COORD_COLUMNS:],
                      axis=(1, 2))
        same_rows.append(same)
        # (rows, atoms * 3, 10): a view when every row passed (the common case)
        text = rows[:, :, :_COORD_COLUMNS] if same.all() else rows[same, :, :_COORD_COLUMNS]
        fields.append(text.reshape(-1, n_atoms * 3, 10))
        total += text.shape[0] * n_atoms * 3
    columns = np.empty((10, total), np.uint8)
    start = 0
    for text in fields:
        stop = start + text.shape[0] * text.shape[1]
        np.subtract(np.moveaxis(text, -1, 0), np.uint8(48),
                    out=columns[:, start:stop].reshape(10, text.shape[0], text.shape[1]))
        start = stop
    values = _column_values(columns) if total else None
    plain_rows, start = [], 0
    for block, same, text in zip(blocks, same_rows, fields, strict=True):
        n_rows, n_atoms = len(block.offsets), block.n_atoms
        coords = np.zeros((n_rows, n_atoms, 3))
        plain = np.zeros(n_rows, dtype=bool)
        ok_rows = np.flatnonzero(same)
        stop = start + text.shape[0] * text.shape[1]
        block_values = values[start:stop] if values is not None else \
            _column_values(columns[:, start:stop])
        if block_values is not None:
            coords[ok_rows], plain[ok_rows] = block_values.reshape(-1, n_atoms, 3), True
        else:  # some field is not plain: row by row, keep the plain rows
            for k, row in enumerate(ok_rows):
                row_values = _parse_fixed_coordinates(text[k])
                if row_values is not None:
                    coords[row], plain[row] = row_values.reshape(n_atoms, 3), True
        start = stop
        # the template's own coordinates are RDKit's, whatever their text
        coords[0], plain[0] = block.template.GetConformer().GetPositions(), True
        block.coords = coords
        plain_rows.append(plain)
    return plain_rows


def _template_block(mol: Chem.Mol, data: bytes, data_array: np.ndarray, start: int,
                    stop: int) -> _Block | None:
    """A block from a record RDKit read (``data[start:stop]``), or None when its layout is
    not one later records can be checked against (V3000, uneven atom lines, several
    conformers)."""
    if mol.GetNumConformers() != 1:
        return None
    header = _header(data, start, stop)
    if header is None:
        return None
    counts, dimension, atoms_start, n_atoms = header
    if n_atoms != mol.GetNumAtoms() or n_atoms == 0:
        return None
    line_end = data.find(b"\n", atoms_start, stop)
    line_length = line_end - atoms_start
    atoms_stop = atoms_start + n_atoms * (line_length + 1)
    if line_length <= _COORD_COLUMNS or atoms_stop > stop:
        return None
    atom_bytes = data_array[atoms_start:atoms_stop].reshape(n_atoms, line_length + 1)
    if not np.all(atom_bytes[:, -1] == 10):
        return None
    n_bonds = mol.GetNumBonds()
    bond_length = data.find(b"\n", atoms_stop, stop) - atoms_stop if n_bonds else 0
    bonds_stop = atoms_stop + n_bonds * (bond_length + 1)
    if n_bonds and (bond_length < _BOND_STEREO.stop or bonds_stop > stop):
        return None
    bond_bytes = data_array[atoms_stop:bonds_stop].reshape(n_bonds, bond_length + 1)
    if not np.all(bond_bytes[:, -1] == 10):
        return None
    end = data.find(_END_LINE, bonds_stop - 1, stop)
    if end < 0:
        return None
    return _Block(mol, counts, dimension, atom_bytes.copy(), bond_bytes.copy(),
                  data[bonds_stop:end], atoms_start)


def _header(data: bytes, start: int, stop: int):
    """(counts line, dimension code, start of the atom block, atom count) of a V2000 record,
    or None."""
    title_end = data.find(b"\n", start, stop)
    program_end = data.find(b"\n", title_end + 1, stop) if title_end >= 0 else -1
    comment_end = data.find(b"\n", program_end + 1, stop) if program_end >= 0 else -1
    counts_end = data.find(b"\n", comment_end + 1, stop) if comment_end >= 0 else -1
    if counts_end < 0:
        return None
    counts = data[comment_end + 1:counts_end]
    if b"V2000" not in counts:
        return None
    try:
        n_atoms = int(counts[0:3])
    except ValueError:
        return None
    dimension = data[title_end + 21:min(title_end + 23, program_end)]  # "3D": columns 21-22
    return counts, dimension, counts_end + 1, n_atoms


def _rdkit_groups(path: Path) -> list[_Entry | None]:
    """Every record read by RDKit (None: unreadable), as entries."""
    return [None if mol is None else _Entry(mol=mol) for _, mol in iter_sdf(path)]


def _read_entries(path: Path) -> list[_Entry | None]:
    """Every record of the file in order, as entries (None: RDKit cannot read it)."""
    with open_binary(path) as handle:
        data = handle.read()
    if b"\r" in data:
        return _rdkit_groups(path)
    data_array = np.frombuffer(data, dtype=np.uint8)
    stops, end = [], 0  # end of each record ending in a whole "$$$$" line
    if data.startswith(_RECORD_END):
        stops.append(len(_RECORD_END))
        end = len(_RECORD_END)
    needle, find = b"\n" + _RECORD_END, data.find
    while (found := find(needle, max(end - 1, 0))) >= 0:
        end = found + 1 + len(_RECORD_END)
        stops.append(end)
    entries: list[_Entry | None] = []
    blocks: list[_Block] = []
    recent: list[_Block] = []  # the last few templates, newest first
    for start, stop in zip([0, *stops], stops, strict=False):  # starts: 0, then each stop
        entry = None
        for block in recent:
            # a file may interleave a few atom or bond orders of one molecule (Hutchison's
            # references do): each keeps its template
            entry = _fast_entry(data, data_array, block, start, stop)
            if entry is not None:
                break
        if entry is not None:
            entries.append(entry)
            continue
        # (a fast-read record has a header, a counts line and "$$$$": only others can fail)
        if data.count(b"\n", start, stop) < 5:  # not even a header and counts line: a
            return _rdkit_groups(path)  # "$$$$" header line, RDKit draws other boundaries
        mol = _rdkit_record(data[start:stop])  # a new template, or a record of its own
        if mol is None:
            entries.append(None)
            continue
        candidate = _template_block(mol, data, data_array, start, stop)
        if candidate is not None:
            recent = [candidate, *recent[:_RECENT_TEMPLATES - 1]]
            blocks.append(candidate)
            entries.append(_Entry(block=candidate, row=0, mol=mol, text=data[start:stop]))
        else:
            entries.append(_Entry(mol=mol, text=data[start:stop]))
    tail = data[end:]
    if tail.strip():  # a last record without its terminator (a cut file): RDKit decides
        mol = _rdkit_record(tail)
        entries.append(None if mol is None else _Entry(mol=mol, text=tail))
    for block, plain in zip(blocks, _finish_blocks(blocks, data), strict=True):
        if not plain.all():
            _demote_rows(entries, block, plain)
    return entries


def _demote_rows(entries: list, block: _Block, plain: np.ndarray) -> None:
    """Records of ``block`` that did not pass its checks: read by RDKit on their own."""
    for k, entry in enumerate(entries):
        if entry is not None and entry.block is block and not plain[entry.row]:
            mol = _rdkit_record(entry.text)
            entries[k] = None if mol is None else _Entry(mol=mol, text=entry.text)


_RECENT_TEMPLATES = 4


def _fast_entry(data: bytes, data_array: np.ndarray, block: _Block | None, start: int,
                stop: int):
    """The entry of record ``data[start:stop]`` read against ``block``'s template, None when
    RDKit must read it. Checks here: the counts line and the dimension code equal the
    template's, then the bond lines, the lines up to ``M  END`` and that line (the atom lines
    outside the coordinate columns are compared for a whole block at once, in
    :func:`_finish_blocks`), then the data items' form. Paid per record: kept to a few byte
    comparisons."""
    if block is None:
        return None
    title_end = data.find(b"\n", start, stop)
    program_end = data.find(b"\n", title_end + 1, stop) if title_end >= 0 else -1
    comment_end = data.find(b"\n", program_end + 1, stop) if program_end >= 0 else -1
    if comment_end < 0:
        return None
    atoms_start = comment_end + 1 + len(block.counts_line)
    # the counts line (with its newline, so the atom count and V2000 tag are the template's)
    if data[comment_end + 1:atoms_start] != block.counts_line or \
            data[title_end + 21:min(title_end + 23, program_end)] != block.dimension:
        return None
    bonds_start = atoms_start + block.atoms_span
    items_start = bonds_start + block.after_length
    if items_start > stop - len(_RECORD_END):
        return None
    after_atoms = data[bonds_start:items_start]
    if after_atoms not in block.after_atoms:
        bonds_stop = bonds_start + block.bond_bytes.size
        if block.dimension != b"3D" or after_atoms[block.bond_bytes.size:] != \
                block.tail + _END_LINE:
            return None
        # the bond stereo field (wedges) may differ: RDKit takes the stereo of a 3D record
        # from its coordinates, and writes wedges per conformer; the RMSD engine reads none
        bonds = data_array[bonds_start:bonds_stop].reshape(block.bond_bytes.shape)
        differs = bonds != block.bond_bytes
        differs[:, _BOND_STEREO] = False
        if differs.any():
            return None
        block.after_atoms.add(after_atoms)  # a molecule has few wedge patterns: seen once
    items = _data_items(block, data, items_start, stop - len(_RECORD_END))
    if items is None:
        return None
    try:  # the title, unless a data item is called _Name: RDKit sets that one last
        props = {"_Name": data[start:title_end].decode(), **items}
    except UnicodeDecodeError:
        return None
    row = len(block.offsets)
    block.offsets.append(atoms_start)
    return _Entry(props=props, block=block, row=row, text=data[start:stop])


def read_record_groups(path: str | Path, key: str,
                       errors: list[dict] | None = None) -> dict[str, ConformerRecords]:
    """:func:`conformer.sdf_io.read_conformer_groups` (same groups, order, errors and
    messages) with :class:`ConformerRecords` groups read by the fast reader."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: file not found")
    groups: dict[str, list[_Entry]] = {}
    for index, entry in enumerate(_read_entries(path)):
        value = None if entry is None else entry.get(key)
        reason = None
        if entry is None:
            reason = "cannot be read by RDKit"
        elif value is None:
            reason = f"has no property '{key}'"
        if reason is not None:
            if errors is None:
                raise UserInputError(f"{path}: record {index + 1} {reason}")
            errors.append({"record": index + 1, "reason": f"{path}: record {reason}"})
            continue
        groups.setdefault(value, []).append(entry)
    return {name: ConformerRecords(entries) for name, entries in groups.items()}


def records_digest(groups: dict[str, ConformerRecords], names: list[str]) -> str:
    """A short hash of the named groups' records (see :meth:`ConformerRecords.digest`)."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        ConformerRecords.from_molecules(groups[name]).digest(digest.update)
    return digest.hexdigest()[:16]
