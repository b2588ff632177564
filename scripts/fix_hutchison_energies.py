"""Make ``dlpno_ccsdt_rel_kcal`` in data/hutchison/hutchison_conformers.sdf.gz relative.

The SDF was converted (outside this repository; see data/hutchison/SOURCE.md) with the
benchmark's raw ``dlpno`` column (kcal/mol values between about 1,484 and 9,612, offset per
molecule) written as ``dlpno_ccsdt_rel_kcal``, while the property's name and the README promise
DLPNO-CCSD(T) energies relative to each molecule's lowest conformer. This rewrites each value
as ``value - min over the molecule's conformers`` (exact decimal arithmetic, kcal/mol, so the
minimum of every molecule is 0) and changes no other byte of any record. Idempotent: run on a
fixed file it changes nothing.

    python scripts/fix_hutchison_energies.py [data/hutchison/hutchison_conformers.sdf.gz]
"""

from __future__ import annotations

import gzip
import re
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

PROPERTY = b"dlpno_ccsdt_rel_kcal"
GROUP = b"molecule"


def _value_span(record: bytes, key: bytes) -> tuple[int, int] | None:
    match = re.search(rb"^>\s*<" + re.escape(key) + rb">[^\n]*\n([^\n]*)", record, re.M)
    return match.span(1) if match else None


def relative_energies(data: bytes) -> bytes:
    """The SDF text ``data`` with the property made relative to each molecule's minimum."""
    records = data.split(b"$$$$\n")
    values: dict[bytes, list[Decimal]] = defaultdict(list)
    spans = []
    for record in records:
        group, value = _value_span(record, GROUP), _value_span(record, PROPERTY)
        if group is None or value is None:
            spans.append(None)
            continue
        name = record[group[0]:group[1]].strip()
        number = Decimal(record[value[0]:value[1]].strip().decode())
        values[name].append(number)
        spans.append((name, value, number))
    lowest = {name: min(numbers) for name, numbers in values.items()}
    out = []
    for record, span in zip(records, spans, strict=True):
        if span is not None:
            name, (start, stop), number = span
            relative = format(number - lowest[name], "f").encode()
            record = record[:start] + relative + record[stop:]
        out.append(record)
    return b"$$$$\n".join(out)


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else
                "data/hutchison/hutchison_conformers.sdf.gz")
    data = gzip.open(path, "rb").read()
    fixed = relative_energies(data)
    if fixed == data:
        print(f"{path}: already relative, unchanged")
        return
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as handle:
        handle.write(fixed)
    print(f"{path}: {PROPERTY.decode()} made relative to each molecule's minimum")


if __name__ == "__main__":
    main()
