"""Hugging Face Hub model ids (``"google/rembert"``) turned into local directories, for every from_pretrained.

`resolve_directory` is the one place where a name that is not a local path becomes a directory: the
models (`rembert_fast.checkpoint`), `RemBertConfig` and both tokenizers call it, then read the directory
as they read any other. A local path always wins over a Hub id of the same name and is returned as it
is (joined with `subfolder`, as transformers does); only a name that exists nowhere on the disk goes to
`huggingface_hub.snapshot_download`, which downloads just the files asked for into the Hub cache (or,
offline, finds them there) and returns the snapshot directory. `huggingface_hub` is imported only then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# transformers' from_pretrained keywords that choose what to fetch from the Hub and how.
HUB_KEYWORDS = ("revision", "cache_dir", "local_files_only", "token", "subfolder", "force_download")
# transformers' from_pretrained keywords for its loader, with no effect here: the models' and tokenizers'
# from_pretrained accept them (so a transformers call works unchanged) and drop them, never storing them in
# a config. `attn_implementation`: rembert_fast's attention is its own on every path; `use_fast`: each
# tokenizer class is what it is.
LOADER_ONLY_KEYWORDS = ("trust_remote_code", "proxies", "low_cpu_mem_usage", "attn_implementation",
                        "use_safetensors", "_fast_init", "resume_download", "use_fast")


class PretrainedNotFoundError(FileNotFoundError, ValueError):
    """A name that is neither a local path nor a Hub model that could be found (one-line message)."""


def pop_hub_keywords(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the `HUB_KEYWORDS` out of a from_pretrained's `kwargs` (in place), for `resolve_directory`."""
    return {name: kwargs.pop(name) for name in HUB_KEYWORDS if name in kwargs}


def resolve_directory(
    name_or_path: str | os.PathLike,
    files: Sequence[str],
    one_of: Sequence[Sequence[str]] = (),
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    subfolder: str | None = None,
    force_download: bool = False,
) -> str:
    """The local directory (or file) `name_or_path` names, fetching it from the Hub when it is a model id.

    Args:
        name_or_path: a local directory or file, or a Hub model id ("google/rembert", "rembert").
        files: file names or glob patterns to fetch from a Hub repository, when it has them.
        one_of: alternatives fetched in preference order, each a group of patterns whose first one marks
            it present: only the first group the repository has is fetched (e.g. safetensors weights
            rather than pytorch_model.bin as well).
        revision: branch, tag or commit of a Hub repository (default "main"); unused for a local path.
        cache_dir: the Hub cache (default: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
        local_files_only: never reach the Hub, only its cache; also when $HF_HUB_OFFLINE is set.
        token: the Hub access token (for gated or private repositories); unused for a local path.
        subfolder: a folder inside the directory or repository that holds the files.
        force_download: download the files again even when cached.

    Returns:
        A local path: `name_or_path` (joined with `subfolder`) when it exists on the disk, otherwise the
        Hub snapshot directory holding the files found.

    Raises:
        PretrainedNotFoundError (a FileNotFoundError and a ValueError): `name_or_path` does not exist
            and is not a valid model id, or the model is in neither the Hub nor (offline) its cache, or
            huggingface_hub is not installed. The message is one line naming the id, cache and revision.
    """
    path = os.fspath(name_or_path)
    if os.path.exists(path):
        return os.path.join(path, subfolder) if subfolder and os.path.isdir(path) else path
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import EntryNotFoundError, HFValidationError, IncompleteSnapshotError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise PretrainedNotFoundError(
            f"{path!r} does not exist as a local path, and loading it as a Hub model id needs "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    try:
        validate_repo_id(path)
    except HFValidationError as err:
        raise PretrainedNotFoundError(
            f"{path!r} does not exist: it is not a local directory or file, and not a valid Hub model id "
            f"({err})"
        ) from None
    cache = os.fspath(cache_dir) if cache_dir is not None else _default_cache_dir()
    offline = bool(local_files_only) or _hub_offline()
    folder = subfolder.strip("/") if subfolder else ""
    try:
        for group in list(one_of) or [()]:
            patterns = [f"{folder}/{name}" if folder else name for name in (*files, *group)]
            snapshot = snapshot_download(
                path, revision=revision, cache_dir=cache, local_files_only=offline, token=token,
                force_download=force_download, allow_patterns=patterns,
            )
            directory = os.path.join(snapshot, folder) if folder else snapshot
            if not group or any(Path(directory).glob(group[0])):
                break
    except (OSError, ValueError, EntryNotFoundError) as err:
        looked_for = (*files, *(group[0] for group in one_of))
        if offline and not isinstance(err, IncompleteSnapshotError):  # the Hub's message says no more
            reason = "no snapshot of it in the cache, and offline (HF_HUB_OFFLINE or local_files_only=True)"
        else:
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        raise PretrainedNotFoundError(
            f"{path!r} is not a local directory, and the Hub model {path!r} at revision "
            f"{revision or 'main'!r}{f' (subfolder {folder!r})' if folder else ''} could not be fetched "
            f"(Hub cache {cache!r}; looking for {', '.join(looked_for)}): {reason}"
        ) from None
    return directory


def _hub_offline() -> bool:
    """$HF_HUB_OFFLINE (or transformers' $TRANSFORMERS_OFFLINE) as set now, not when huggingface_hub was
    imported; huggingface_hub's own reading of it at import counts too."""
    from huggingface_hub import constants

    values = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(
        (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for value in values
    )


def _default_cache_dir() -> str:
    """huggingface_hub's cache directory as the environment names it now."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE
