"""Weights and tokenizers from a local path or the local Hugging Face cache, never from the network: the one place
the generators (models/scale/) and the reward models (rewards/) resolve a hub id. A run must not download (results
would depend on what the hub served that day, and the machines that run the suite are offline), so an uncached
hub id is a ValueError saying how to fetch it on a networked machine."""

from __future__ import annotations

import re
from pathlib import Path

# Real CLIP/BERT/T5 vocabularies have ~30k-50k tokens. An offline `CLIPTokenizer.from_pretrained(<hub id>)` that
# finds nothing can return a tokenizer of length 2 instead of failing, which then tokenizes every prompt to unknown
# tokens; refusing tiny vocabularies turns that into an error.
MIN_VOCAB = 1000

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def one_line(text: object) -> str:
    """Any text (an error, say) on one line."""
    return " ".join(str(text).split())


def how_to_get(source: str, filename: str | None = None) -> str:
    target = f"{source} {filename}" if filename else source
    return (
        f"download it on a networked machine with `hf download {target}` (`huggingface-cli download {target}` with "
        f"an older huggingface_hub), or pass a local path instead"
    )


def is_hub_id(source: str | Path) -> bool:
    """Whether `source` names a Hugging Face hub repository rather than a local path."""
    if isinstance(source, Path):
        return False
    text = str(source)
    return bool(_HUB_ID.match(text)) and ".." not in text and not Path(text).exists()


def resolve_directory(source: str | Path, what: str, allow_patterns: list[str] | None = None) -> Path:
    """A local directory for `source`: the directory itself, or the cached snapshot of a hub id (holding at least
    the files `allow_patterns` match, when given). Never downloads; a ValueError names `what` and how to get it."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{what}: expected a directory at {path}, found a file")
    if not is_hub_id(source):
        raise ValueError(f"{what}: no such directory {path}, and {str(source)!r} is not a hub id (owner/name) either")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=str(source), allow_patterns=allow_patterns, local_files_only=True))
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError, ...: all mean "not here"
        raise ValueError(
            f"{what} '{source}' is not in the local Hugging Face cache ({type(error).__name__}): "
            f"{how_to_get(str(source))}"
        ) from error


def resolve_file(source: str | Path, filename: str, what: str) -> Path:
    """A local file: `source` itself if it is a file, `source/filename` for a directory, or `filename` from the
    cached snapshot of hub id `source`. Never downloads; ValueError naming `what` and how to obtain it."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if not (path / filename).is_file():
            raise ValueError(f"{what}: {path} has no {filename}")
        return path / filename
    if not is_hub_id(source):
        raise ValueError(f"{what}: no such file or directory {path}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=str(source), filename=filename, local_files_only=True))
    except Exception as error:
        raise ValueError(
            f"{what} ('{filename}' of '{source}') is not in the local Hugging Face cache "
            f"({type(error).__name__}): {how_to_get(str(source), filename)}"
        ) from error


def check_vocabulary(tokenizer, min_vocab: int, where: str):
    """The tokenizer, refused when its vocabulary is smaller than `min_vocab` (the silent offline failure; a
    smaller `min_vocab` is for a deliberately tiny tokenizer, as the tests' worlds have)."""
    if len(tokenizer) < min_vocab:
        raise ValueError(
            f"the tokenizer in {where} has only {len(tokenizer)} tokens (< min_vocab={min_vocab}): its vocabulary "
            f"files are missing or broken; pass a directory with the real tokenizer, or a smaller min_vocab if the "
            f"tiny vocabulary is deliberate"
        )
    return tokenizer
