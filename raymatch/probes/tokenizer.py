"""The tokenizer of a language model's folder, and a fingerprint of what decides its tokens.

Models whose tokenizers differ cannot be compared token by token: :func:`same_tokenizer` names two that differ.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..store.layout import digest

__all__ = ["TOKENIZER_FILES", "TokenizerError", "has_tokenizer", "load_tokenizer", "same_tokenizer",
           "tokenizer_fingerprint"]

#: Files that hold a tokenizer (transformers would otherwise make an empty one from the model type alone).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded, or a population whose models do not share one; the message names them."""


def load_tokenizer(folder: str, *, label: str | None = None):
    """The tokenizer saved in a folder (``transformers.AutoTokenizer``, local files only).

    Raises
    ------
    TokenizerError
        The folder holds no tokenizer that ``transformers`` can load.
    """
    from transformers import AutoTokenizer

    if not has_tokenizer(folder):
        raise TokenizerError(f"tokenizer of {label or folder}: {folder} holds no tokenizer files "
                               f"({', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TokenizerError(f"tokenizer of {label or folder}: cannot load one from {folder}: {reason}") from None
    if tokenizer.vocab_size == 0:
        raise TokenizerError(f"tokenizer of {label or folder}: the one in {folder} has an empty vocabulary")
    return tokenizer


def has_tokenizer(folder: str) -> bool:
    """Whether a folder holds a tokenizer's files (:data:`TOKENIZER_FILES`)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in TOKENIZER_FILES)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what decides a tokenizer's tokens: vocabulary, merges, normalisation, special tokens.

    Padding and truncation settings (the padding side among them) are left out: they change no token.

    Parameters
    ----------
    tokenizer : transformers tokenizer

    Returns
    -------
    str
        16 hex characters.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        content = json.loads(backend.to_str())
        for key in ("padding", "truncation"):
            content.pop(key, None)
    else:
        content = {"vocab": sorted(tokenizer.get_vocab().items())}
    special = {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())}
    return digest({"tokenizer": content, "special": special})


def same_tokenizer(fingerprints: Mapping[str, str]) -> str:
    """The one fingerprint a population's models share.

    Parameters
    ----------
    fingerprints : mapping of str to str
        Model label → :func:`tokenizer_fingerprint`.

    Returns
    -------
    str

    Raises
    ------
    TokenizerError
        Naming two models whose tokenizers differ.
    """
    if not fingerprints:
        raise TokenizerError("population: no models")
    (first, expected), *rest = fingerprints.items()
    for label, fingerprint in rest:
        if fingerprint != expected:
            raise TokenizerError(f"population: models {first} and {label} have different tokenizers (vocabulary, "
                                   "merges or special tokens differ): a row must be the same token in every model")
    return expected
