"""How a language-model population is trained: ``population.training: {task: causal-lm, corpus: …}``.

:class:`CausalLMSpec` holds what :mod:`raymatch.train.causal_lm` needs besides the seed: the corpus, the BPE
tokenizer's vocabulary size, the tiny GPT-2 (:class:`~raymatch.train.causal_lm.CausalLMRecipe`) and where the
``save_pretrained`` folders go. Its :attr:`~CausalLMSpec.id` digests the corpus's bytes, not its path.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any, ClassVar, Literal

from ..config import (
    Config,
    Loc,
    NonNegativeInt,
    NonNegativeNumber,
    OptionalLocalPath,
    OptionalString,
    Path,
    PositiveInt,
    PositiveNumber,
    ProperFraction,
    local_path,
    one_of,
    optional,
    strings,
)
from ..probes.spec import TEXT_FORMATS
from ..store.layout import digest

__all__ = ["CAUSAL_LM", "CausalLMSpec", "corpus_digest"]

#: ``population.training.task`` of a language-model population.
CAUSAL_LM = "causal-lm"


@functools.lru_cache(maxsize=8)
def _files_digest(files: tuple[tuple[str, int, int], ...]) -> str:
    sha = hashlib.sha256()
    for path, _, _ in files:
        sha.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as handle:
            sha.update(hashlib.sha256(handle.read()).digest())
    return sha.hexdigest()


def corpus_digest(path: str, exclude: tuple[str, ...] = ()) -> str:
    """SHA-256 of a corpus's bytes: one file, or a folder's fortune files (their names too) but those excluded.

    Raises
    ------
    FileNotFoundError
        Neither a file nor a folder.
    """
    from .causal_lm import fortune_files

    if os.path.isdir(path):
        files = [file for file in fortune_files(path) if os.path.basename(file) not in exclude]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(f"training.corpus: {path} does not exist")
    stats = tuple((file, os.stat(file).st_size, os.stat(file).st_mtime_ns) for file in files)
    return _files_digest(stats)


class CausalLMSpec(Config):
    """A language-model population's training: a BPE tokenizer learnt once on the corpus, tiny GPT-2s per seed.

    Parameters
    ----------
    task : {'causal-lm'}
    corpus : str
        A folder of fortune files (Debian's ``fortunes``: ``/usr/share/games/fortunes``) or one text file; a
        relative path resolves against the study file's folder.
    format : {'lines', 'jsonl', 'parquet', 'fortune'}, optional
        How a corpus file holds its texts (default ``lines``; a folder is read as fortune files).
    field : str, optional
        The JSON key or Parquet column of a ``jsonl`` or ``parquet`` corpus.
    exclude : tuple of str
        File names of a corpus folder left out (a probe's file, held out from training).
    holdout : float, default 0.05
        Share of the texts held out (the same for every seed), for the held-out loss in each record.
    vocab_size : int, default 2048
        Of the BPE tokenizer (``tokenizers``), trained once and shared by every seed.
    n_layer : int, default 2
        Blocks of the GPT-2.
    n_embd : int, default 64
        Its width (its MLP has 4 × ``n_embd`` neurons).
    n_head : int, default 4
        Attention heads (dividing ``n_embd``).
    n_positions : int, default 128
        Positions of the GPT-2: at least ``probe.max_length``.
    block_size : int, default 64
        Tokens of each training window (at most ``n_positions``).
    batch_size : int, default 16
        Windows per step.
    steps : int, default 400
        Training steps (0: the initialisation).
    lr : float, default 3e-3
        AdamW's peak learning rate, after a linear warm-up, then a cosine decay to a tenth.
    warmup : int, default 20
        Warm-up steps.
    weight_decay : float, default 0.01
        AdamW's weight decay.
    folder : str, optional
        Where the ``save_pretrained`` folders go (a folder every Ray worker sees at the same path). Default: the
        store's ``checkpoints/lm/…`` area, for a local store. Not part of :attr:`id`.
    """

    task: Literal["causal-lm"] = CAUSAL_LM
    corpus: local_path(Path)
    format: optional(one_of(*TEXT_FORMATS)) = None
    field: OptionalString = None
    exclude: strings("file names") = ()
    holdout: ProperFraction = 0.05
    vocab_size: PositiveInt = 2048
    n_layer: PositiveInt = 2
    n_embd: PositiveInt = 64
    n_head: PositiveInt = 4
    n_positions: PositiveInt = 128
    block_size: PositiveInt = 64
    batch_size: PositiveInt = 16
    steps: NonNegativeInt = 400
    lr: PositiveNumber = 3e-3
    warmup: NonNegativeInt = 20
    weight_decay: NonNegativeNumber = 0.01
    folder: OptionalLocalPath = None

    _root: ClassVar[str] = "training spec"

    @classmethod
    def _check_together(cls, values: dict[str, Any], data: Any) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        if "n_embd" in values and "n_head" in values and values["n_embd"] % values["n_head"]:
            problems.append((("n_head",), f"must divide n_embd ({values['n_embd']}); got {values['n_head']}"))
        if "block_size" in values and "n_positions" in values and values["block_size"] > values["n_positions"]:
            problems.append((("block_size",), f"must be at most n_positions ({values['n_positions']}); got "
                                              f"{values['block_size']}"))
        if values.get("field") is not None and values.get("format") not in ("jsonl", "parquet"):
            problems.append((("field",), "only used with format jsonl or parquet"))
        return problems

    def recipe(self):
        """The :class:`~raymatch.train.causal_lm.CausalLMRecipe` of the spec."""
        from .causal_lm import CausalLMRecipe

        return CausalLMRecipe(**{name: getattr(self, name) for name in CausalLMRecipe.__dataclass_fields__})

    def gpt2_config(self):
        """The :class:`transformers.GPT2Config` the seeds are built from, before the tokenizer exists.

        Its ``vocab_size`` is the spec's (the trained tokenizer may hold fewer tokens): enough for the module tree
        and the layer widths that a plan checks.
        """
        from transformers import GPT2Config

        return GPT2Config(vocab_size=self.vocab_size, n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                          n_positions=self.n_positions, bos_token_id=0, eos_token_id=0)

    @functools.cached_property
    def id(self) -> str:
        """16 hex characters: the spec without ``folder``, the corpus by the digest of its bytes."""
        content = self.to_dict()
        del content["folder"]
        content["corpus"] = corpus_digest(self.corpus, self.exclude)
        return digest(content)
