"""Test helper: a Hugging Face Hub cache laid out as huggingface_hub lays it out, built from a directory.

`<cache>/models--org--name/refs/<ref>` holds a commit hash; `snapshots/<commit>/<path>` are relative links
into `blobs/<sha256 of the file>`, as a real download leaves them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def add_to_hub_cache(cache: Path, repo_id: str, source: Path, ref: str = "main", subfolder: str = "") -> str:
    """Put every file under `source` (into `subfolder` of the repository) as one commit of `repo_id`
    named by `refs/<ref>`; returns the commit hash (the sha1 of the files' bytes)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(path for path in source.rglob("*") if path.is_file())
    commit = hashlib.sha1(b"".join(path.read_bytes() for path in files) + subfolder.encode()).hexdigest()
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / subfolder / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit
