"""Provenance: the code version and library versions written into every artefact.

Every checkpoint, manifest and result file records :func:`environment_info`, so a number can
always be traced back to the code and libraries that produced it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from conformer import __version__

TRACKED_LIBRARIES = ("numpy", "scipy", "torch", "e3nn", "lightning", "rdkit", "torch-geometric")


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The git commit of the source tree (with ``-dirty`` if modified), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose behaviour can change results."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:  # the rdkit wheel's metadata and the library can disagree; trust the library
        from rdkit import rdBase

        versions["rdkit"] = rdBase.rdkitVersion
    except ImportError:
        pass
    return versions


def environment_info() -> dict[str, Any]:
    """Code version, git revision, Python and library versions, as a JSON-able dict."""
    return {
        "conformer_version": __version__,
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": library_versions(),
    }


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short, order-independent SHA-256 of a JSON-able object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: str | Path, length: int | None = None) -> str:
    """SHA-256 of a file's bytes (truncated to ``length`` hex digits if given)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    text = digest.hexdigest()
    return text[:length] if length else text
