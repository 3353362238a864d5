"""Tiny language models for tests: a BPE tokenizer trained on made-up sentences, GPT-2 / BERT / GPT-NeoX folders
built from configs, and a Hugging Face Hub cache laid out as the Hub's (nothing is ever downloaded)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

WORDS = ("the cat dog sat on a mat under big small red blue tree house river ran quickly slowly and but with "
         "over into every little bird sang song morning night sun moon rain fell softly loud quiet old new").split()


def sentences(n: int = 60, seed: int = 0) -> list[str]:
    """``n`` made-up sentences of very different lengths (2 to 40 words)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, size=n)
    return [" ".join(rng.choice(WORDS, size=k)).capitalize() + "." for k in lengths]


def write_tokenizer(folder: Path, *, vocab_size: int = 400, padding_side: str = "right", template: bool = False,
                    extra_special: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer saved as a transformers folder; ``template`` adds ``[CLS] … [SEP]`` (BERT-like)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", *extra_special] if template else ["<|endoftext|>",
                                                                                       *extra_special]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sentences(200, seed=1), trainer)
    if template:
        cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                 special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        names = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    else:
        names = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side=padding_side, **names)
    fast.save_pretrained(str(folder))
    return fast


def gpt2(seed: int, vocab_size: int, *, n_layer: int = 2, n_embd: int = 32, n_positions: int = 64):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=n_positions,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def bert(seed: int, vocab_size: int, *, layers: int = 2, hidden: int = 32):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=0)
    return BertForMaskedLM(config).eval()


def neox(seed: int, vocab_size: int, *, layers: int = 2, hidden: int = 32):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=vocab_size, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2,
                           intermediate_size=2 * hidden, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    return GPTNeoXForCausalLM(config).eval()


def save_model(model, folder: Path, tokenizer=None) -> Path:
    """``save_pretrained`` the model (and the tokenizer) into ``folder``."""
    import transformers

    transformers.logging.disable_progress_bar()
    model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder


def write_hub_repo(cache: Path, repo_id: str, revisions: dict[str, Path], *, commits: dict[str, str] | None = None
                   ) -> dict[str, str]:
    """Lay ``folder``s out in a Hub cache as ``repo_id``'s revisions (refs → commit, snapshots → blobs).

    Returns the commit hash of each revision.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for part in ("refs", "snapshots", "blobs"):
        (repo / part).mkdir(parents=True, exist_ok=True)
    found = {}
    for revision, folder in revisions.items():
        commit = (commits or {}).get(revision) or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(exist_ok=True)
        for file in sorted(Path(folder).iterdir()):
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            link = snapshot / file.name
            if not link.exists():
                os.symlink(os.path.relpath(blob, snapshot), link)
        (repo / "refs" / revision).write_text(commit)
        found[revision] = commit
    return found


def gpt2_folders(root: Path, seeds=(0, 1), *, tokenizer=None, **sizes) -> list[Path]:
    """``root/seed<k>``: tiny GPT-2 ``save_pretrained`` folders, each with the tokenizer (one is written if None)."""
    tokenizer = tokenizer or write_tokenizer(root.parent / f"{root.name}-tokenizer")
    return [save_model(gpt2(seed, len(tokenizer), **sizes), root / f"seed{seed}", tokenizer) for seed in seeds]


def lm_study(store: str, **sections) -> dict:
    """A language-model study's fields (tiny GPT-2 folders under ``lm-seeds/``, ``texts.txt``); ``sections`` replace
    them, ``section__field`` one field of a section."""
    data = {
        "name": "lm",
        "store": {"uri": store},
        "architecture": {"source": "transformers", "class": "AutoModelForCausalLM"},
        "population": {"glob": "lm-seeds/*"},
        "probe": {"text": "texts.txt", "n_examples": 40, "max_length": 48, "rows": {"rows": 400, "repeats": 1}},
        "layers": ["transformer.h.*.mlp.act", "hidden_states"],
        "eps": [0.0, 0.5],
        "cka": False,
        "resources": {"gpus_per_actor": 0, "pair_block": 2, "max_in_flight": 2},
    }
    for name, value in sections.items():
        section, _, field = name.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    return data


def lm_study_folder(root: Path, seeds=(0, 1), n_texts: int = 60) -> Path:
    """``root`` holding ``lm-seeds/seed<k>`` (tiny GPT-2s sharing a tokenizer) and ``texts.txt`` (one per line)."""
    root.mkdir(parents=True, exist_ok=True)
    gpt2_folders(root / "lm-seeds", seeds)
    (root / "texts.txt").write_text("\n".join(sentences(n_texts, seed=3)) + "\n")
    return root
