"""A language-model population in folders: one shared tokenizer, then one ``save_pretrained`` folder per seed.

The task bodies of the engine's fan-out (:func:`raymatch.engine.training.train_lm_population`), no Ray here. Under a
population's root (:func:`raymatch.study.lm.training_root`: ``checkpoints/lm/<trained|untrained>-<spec id>`` of a
local store, or under ``training.folder``)::

    <trained root>/tokenizer/      the BPE tokenizer, trained once on the corpus's training texts
    <root>/seed<k>/                the seed's model, tokenizer and record (training.json); the folder appears whole

A seed is done iff its folder holds its record; the untrained null's folders use the trained root's tokenizer.
"""

from __future__ import annotations

import functools
import os
import shutil
import uuid
from typing import Any

from .causal_lm import RECORD, read_corpus, save_untrained, split_corpus, train_causal_lm, train_tokenizer
from .lm_spec import CausalLMSpec

__all__ = ["TOKENIZER", "corpus_split", "lm_done", "lm_seed_folder", "pending_lm_seeds", "train_lm_seed",
           "train_lm_tokenizer"]

#: The shared tokenizer's folder under a trained population's root.
TOKENIZER = "tokenizer"


def lm_seed_folder(root: str, seed: int) -> str:
    """``<root>/seed<k>``: one seed's ``save_pretrained`` folder."""
    return os.path.join(root, f"seed{seed}")


def lm_done(root: str, seed: int) -> bool:
    """Whether a seed's folder is complete (it holds its record)."""
    return os.path.isfile(os.path.join(lm_seed_folder(root, seed), RECORD))


def pending_lm_seeds(root: str, seeds: Any) -> list[int]:
    """The seeds whose folder is not complete, in order."""
    return [seed for seed in seeds if not lm_done(root, seed)]


@functools.lru_cache(maxsize=2)
def corpus_split(spec: CausalLMSpec) -> tuple[list[str], list[str]]:
    """The corpus's training and held-out texts (:func:`~raymatch.train.causal_lm.split_corpus`, every seed's).

    Read once per process (a warm Ray worker trains several seeds): do not modify the lists.
    """
    fmt = spec.format or ("fortune" if os.path.isdir(spec.corpus) else "lines")
    texts = read_corpus(spec.corpus, fmt=fmt, field_name=spec.field, exclude=spec.exclude)
    return split_corpus(texts, spec.holdout)


def train_lm_tokenizer(spec: CausalLMSpec, root: str) -> str:
    """The population's tokenizer, trained on the corpus's training texts unless it is there; returns its folder.

    Written under a temporary name beside it and renamed when complete.
    """
    folder = os.path.join(root, TOKENIZER)
    if os.path.isfile(os.path.join(folder, "tokenizer.json")):
        return folder
    train, _ = corpus_split(spec)
    os.makedirs(root, exist_ok=True)
    temporary = os.path.join(root, f".{TOKENIZER}.{uuid.uuid4().hex}.tmp")
    try:
        train_tokenizer(train, temporary, vocab_size=spec.vocab_size)
        if not os.path.isdir(folder):
            os.replace(temporary, folder)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary)
    return folder


def train_lm_seed(spec: CausalLMSpec, root: str, tokenizer: str, untrained: bool, threads: int, seed: int) -> dict:
    """Train (or, ``untrained``, initialise) one seed into ``<root>/seed<k>`` unless it is done; returns its record."""
    import json

    folder = lm_seed_folder(root, seed)
    if lm_done(root, seed):
        with open(os.path.join(folder, RECORD)) as handle:
            return json.load(handle)
    train, held = corpus_split(spec)
    if untrained:
        return save_untrained(tokenizer, folder, seed, spec.recipe(), heldout=held, threads=threads)
    return train_causal_lm(train, tokenizer, folder, seed, spec.recipe(), heldout=held, threads=threads)
