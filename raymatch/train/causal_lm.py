"""A real language-model population, offline: a BPE tokenizer and tiny GPT-2s trained on Debian's fortunes.

``training: {task: causal-lm, corpus: …}``. The corpus is a folder of fortune files (Debian's ``fortunes`` package:
``/usr/share/games/fortunes``, quotations separated by lines holding ``%``) or one text file in a probe format
(:data:`~raymatch.probes.text.TEXT_FORMATS`). A fixed share of its texts is held out, the same for every seed
(:func:`~raymatch.train.loop.holdout_split`), for the held-out loss and for probes.

- :func:`train_tokenizer` learns a byte-level BPE tokenizer once with ``tokenizers`` and saves it as a
  ``transformers`` tokenizer folder, shared by every seed.
- :func:`train_causal_lm` builds a GPT-2 from :class:`CausalLMRecipe` (a few layers, width 64–128), initialised from
  the seed, trains it for a fixed number of steps on random windows of the training texts (drawn with the seed) and
  saves it with ``save_pretrained`` beside the tokenizer's files and a record (``training.json``: losses, steps,
  seconds). On the CPU the same seed gives the same weights.
- :func:`save_untrained` saves the untrained null: the same config initialised from the seed, no step.

Each folder is written under a temporary name and renamed when complete. No Ray here: the engine fans seeds out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..probes.text import TEXT_FORMATS, parse_texts, read_texts
from .loop import _torch_settings, holdout_split

__all__ = ["FORTUNES", "RECORD", "CausalLMRecipe", "fortune_files", "heldout_loss", "read_corpus", "save_untrained",
           "split_corpus", "token_stream", "train_causal_lm", "train_tokenizer"]

#: Where Debian's ``fortunes`` package puts its quotations.
FORTUNES = "/usr/share/games/fortunes"
#: The training record in each model folder.
RECORD = "training.json"
#: The tokenizer's one special token: BOS, EOS and padding alike, as in GPT-2.
END_OF_TEXT = "<|endoftext|>"


def fortune_files(folder: str = FORTUNES) -> list[str]:
    """The fortune files of a folder, sorted: every file but the ``.dat`` indexes and ``.u8`` links (no sub-folder)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"training.corpus: {folder} does not exist (Debian's fortunes package puts its texts "
                                f"in {FORTUNES}: apt-get install fortunes)")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, name)) and not name.endswith((".dat", ".u8")))


def read_corpus(path: str = FORTUNES, *, fmt: str = "fortune", field_name: str | None = None,
                exclude: Sequence[str] = ()) -> list[str]:
    """The non-empty texts of a corpus, in order.

    Parameters
    ----------
    path : str
        A folder of fortune files (every one but those named in ``exclude``), or one file in format ``fmt``.
    fmt, field_name : str
        For a file: one of :data:`~raymatch.probes.text.TEXT_FORMATS`, and its field.
    exclude : sequence of str
        File names of a folder to leave out (held out for a probe, say).

    Returns
    -------
    list of str
    """
    if os.path.isdir(path):
        texts = []
        for file in fortune_files(path):
            if os.path.basename(file) not in exclude:
                with open(file, "rb") as handle:
                    texts += parse_texts(handle.read(), "fortune", source=file)
    else:
        if fmt not in TEXT_FORMATS:
            raise ValueError(f"training.corpus.format: must be one of {', '.join(TEXT_FORMATS)}; got {fmt!r}")
        texts = read_texts(path, fmt, field_name)
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError(f"training.corpus: {path} holds no text")
    return texts


def split_corpus(texts: Sequence[str], holdout: float = 0.05) -> tuple[list[str], list[str]]:
    """Training and held-out texts: the fixed holdout of :func:`~raymatch.train.loop.holdout_split` (every seed's)."""
    train, held = holdout_split(len(texts), holdout)
    return [texts[i] for i in train], [texts[i] for i in held]


@dataclass(frozen=True)
class CausalLMRecipe:
    """A tiny GPT-2 and its training budget.

    Attributes
    ----------
    n_layer, n_embd, n_head, n_positions : int
        The :class:`transformers.GPT2Config` (``n_positions`` must cover the probe's ``max_length``).
    vocab_size : int
        Of the BPE tokenizer.
    block_size, batch_size, steps : int
        Windows of ``block_size`` tokens, ``batch_size`` per step, ``steps`` steps.
    lr, warmup, weight_decay : float, int, float
        AdamW with linear warm-up over ``warmup`` steps, then a cosine decay to a tenth.
    """

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 128
    vocab_size: int = 2048
    block_size: int = 64
    batch_size: int = 16
    steps: int = 400
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain values."""
        return asdict(self)

    def config(self, tokenizer: Any):
        """The :class:`transformers.GPT2Config` of the recipe for ``tokenizer`` (no dropout: a step is its batch)."""
        from transformers import GPT2Config

        special = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        return GPT2Config(vocab_size=len(tokenizer), n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                          n_positions=self.n_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          bos_token_id=special, eos_token_id=special, pad_token_id=special)


def train_tokenizer(texts: Sequence[str], folder: str, vocab_size: int = 2048):
    """Learn a byte-level BPE tokenizer on ``texts`` and save it as a ``transformers`` tokenizer folder.

    Deterministic: the same texts give the same vocabulary and merges. Its only special token is
    ``<|endoftext|>`` (BOS, EOS and padding, as in GPT-2); nothing is added to a text when it is tokenised.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   pad_token=END_OF_TEXT, model_max_length=1 << 20)
    fast.save_pretrained(folder)
    return fast


def token_stream(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Every text's tokens followed by ``<|endoftext|>``, one int64 stream (what training windows are cut from)."""
    end = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return np.fromiter((token for text in ids for token in (*text, end)), dtype=np.int64)


def heldout_loss(model: Any, stream: np.ndarray, block_size: int, max_blocks: int = 64) -> float:
    """Mean next-token loss on consecutive windows of a held-out stream (the first ``max_blocks``)."""
    import torch

    n_blocks = min(max_blocks, (len(stream) - 1) // block_size)
    if n_blocks < 1:
        return float("nan")
    blocks = torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=blocks, attention_mask=torch.ones_like(blocks), labels=blocks).loss.item()
    model.train(was_training)
    return loss


def _save(model: Any, tokenizer: Any, folder: str, record: dict) -> None:
    """Save model, tokenizer and record under a temporary name beside ``folder``, then rename it to ``folder``."""
    import transformers

    transformers.logging.disable_progress_bar()  # no "Writing model shards" bar per seed in the workers' logs
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    temporary = os.path.join(parent, f".{os.path.basename(folder)}.{uuid.uuid4().hex}.tmp")
    try:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        with open(os.path.join(temporary, RECORD), "w") as handle:
            json.dump(record, handle, indent=1, sort_keys=True)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(temporary, folder)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary)


def _initialised(recipe: CausalLMRecipe, tokenizer: Any, seed: int):
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(recipe.config(tokenizer))


def save_untrained(tokenizer_folder: str, folder: str, seed: int, recipe: CausalLMRecipe | None = None, *,
                   heldout: Sequence[str] | None = None, threads: int = 1) -> dict:
    """The untrained null of seed ``seed``: the recipe's GPT-2 initialised as :func:`train_causal_lm` starts it.

    Returns
    -------
    dict
        The record saved as ``training.json`` (steps 0, the held-out loss at initialisation).
    """
    import torch

    from ..probes.tokenizer import load_tokenizer

    recipe = recipe or CausalLMRecipe()
    tokenizer = load_tokenizer(tokenizer_folder)
    with _torch_settings(torch, threads, "cpu"):
        model = _initialised(recipe, tokenizer, seed)
        stream = token_stream(heldout, tokenizer) if heldout else None
        record = {"seed": seed, "steps": 0, "trained": False, "recipe": recipe.to_dict(), "seconds": 0.0,
                  "heldout_loss": heldout_loss(model, stream, recipe.block_size) if stream is not None else None}
        _save(model.eval(), tokenizer, folder, record)
    return record


def _learning_rate(recipe: CausalLMRecipe, step: int) -> float:
    if step < recipe.warmup:
        return (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_causal_lm(texts: Sequence[str], tokenizer_folder: str, folder: str, seed: int,
                    recipe: CausalLMRecipe | None = None, *, heldout: Sequence[str] | None = None,
                    threads: int = 1) -> dict:
    """Train one seed's GPT-2 on ``texts`` and save it in ``folder`` (``save_pretrained`` + tokenizer + record).

    Parameters
    ----------
    texts : sequence of str
        The training texts (:func:`split_corpus`).
    tokenizer_folder : str
        From :func:`train_tokenizer`.
    folder : str
        Where the model goes (replaced whole when it exists).
    seed : int
        Seeds the initialisation (``torch.manual_seed``) and the training windows (``numpy.random.default_rng``).
    recipe : CausalLMRecipe, optional
    heldout : sequence of str, optional
        Texts whose loss is recorded at the end.
    threads : int
        ``torch.set_num_threads`` while training (results depend on it only through rounding).

    Returns
    -------
    dict
        The record saved as ``training.json``: seed, steps, the mean training loss of the last tenth of the steps,
        the held-out loss, seconds, tokens seen, the recipe.
    """
    import torch

    from ..probes.tokenizer import load_tokenizer

    recipe = recipe or CausalLMRecipe()
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_folder)
    stream = token_stream(texts, tokenizer)
    if len(stream) <= recipe.block_size + 1:
        raise ValueError(f"training.corpus: {len(stream)} tokens are fewer than one window of {recipe.block_size}")
    rng = np.random.default_rng(seed)
    losses = []
    with _torch_settings(torch, threads, "cpu"):
        model = _initialised(recipe, tokenizer, seed).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                      weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _learning_rate(recipe, step))
        for _ in range(recipe.steps):
            starts = rng.integers(0, len(stream) - recipe.block_size, size=recipe.batch_size)
            batch = torch.from_numpy(np.stack([stream[s : s + recipe.block_size] for s in starts]))
            loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        model.eval()
        held = token_stream(heldout, tokenizer) if heldout else None
        record = {"seed": seed, "steps": recipe.steps, "trained": True, "recipe": recipe.to_dict(),
                  "train_loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None,
                  "first_loss": losses[0] if losses else None,
                  "heldout_loss": heldout_loss(model, held, recipe.block_size) if held is not None else None,
                  "tokens": recipe.steps * recipe.batch_size * recipe.block_size}
        record["seconds"] = time.perf_counter() - started
        _save(model, tokenizer, folder, record)
    return record
