"""``raymatch bench lm``: language-model token rows against the bare forward pass, padding, and the match stage.

Three measurements, each against its baseline in the same run (docs/benchmarks.md):

1. extraction tokens/s of :func:`raymatch.extract.tokens.extract_tokens` (hooks, row gathering, float32 shards
   written to a local store) against a bare batched forward of the same model over the same batches (target ≥ 80 %);
2. the share of padding in the length-bucketed batches on the fortunes corpus (target ≤ 15 %), beside the share of
   batches taken in file order;
3. :func:`raymatch.match.match_curve` on the MLP layers of two random-init GPT-2 small-width models (768 wide, 3,072
   MLP neurons, the first block) over 20,000 token rows: seconds per curve.

The corpus is Debian's ``fortunes`` (:data:`raymatch.train.causal_lm.FORTUNES`), tokenised with a BPE tokenizer
trained on it first (not timed). Models are built from configs with random weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .timing import machine, median_time

__all__ = ["LMSizes", "bench_extraction", "bench_match_stage", "bench_padding", "main"]


@dataclass(frozen=True)
class LMSizes:
    """The sizes of one run (the full ones, or ``--quick``)."""

    n_texts: int = 2000
    max_length: int = 128
    n_embd: int = 256
    n_layer: int = 4
    rows: int = 10_000
    match_embd: int = 768
    match_rows: int = 20_000
    match_texts: int = 1500


QUICK = LMSizes(n_texts=300, n_embd=64, n_layer=2, rows=2000, match_embd=192, match_rows=4000, match_texts=300)


def _gpt2(vocab_size: int, n_embd: int, n_layer: int, n_positions: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=max(1, n_embd // 64),
                        n_positions=n_positions, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def bench_extraction(model, probe, layers, repeats: int, batch_size: int = 64,
                     max_batch_tokens: int = 16_384) -> list[dict]:
    """Bare batched forward against token-row extraction into a local store, over the same batches."""
    import torch

    from ..extract.tokens import extract_tokens, forward_kwargs, iter_batches
    from ..store import Store

    batches = list(iter_batches(probe, batch_size, max_batch_tokens))

    def bare():
        with torch.no_grad():
            for batch in batches:
                model(**forward_kwargs(model, batch))

    tokens = int(probe.lengths.sum())
    times: dict[str, list[float]] = {"bare": [], "extract": []}
    with tempfile.TemporaryDirectory() as folder:
        store, counter = Store(folder), itertools.count()

        def extract():
            extract_tokens(store, model, f"bench{next(counter)}", probe, layers, batch_size=batch_size,
                           max_batch_tokens=max_batch_tokens)

        # Alternated, after one untimed run of each: a shared machine's load drifts alike over both.
        for run in range(repeats + (repeats > 1)):
            for name, call in (("bare", bare), ("extract", extract)):
                started = time.perf_counter()
                call()
                if run or repeats == 1:
                    times[name].append(time.perf_counter() - started)
    return [{"what": "bare batched forward (same batches, no hooks)", "seconds": statistics.median(times["bare"]),
             "runs": repeats, "tokens": tokens},
            {"what": f"extract + store {len(layers)} layers, {probe.rows(0).shape[0]:,} token rows each",
             "seconds": statistics.median(times["extract"]), "runs": repeats, "tokens": tokens}]


def bench_padding(lengths: np.ndarray, batch_size: int = 64, max_batch_tokens: int = 16_384) -> dict:
    """The padding share of the length-bucketed batches, and of batches of ``batch_size`` texts in file order."""
    from ..probes.token_rows import batch_ranges, padding_share

    lengths = np.asarray(lengths, dtype=np.int64)
    in_order = [int(lengths[start : start + batch_size].max()) * len(lengths[start : start + batch_size])
                for start in range(0, len(lengths), batch_size)]
    return {"bucketed": padding_share(lengths, batch_ranges(lengths, batch_size, max_batch_tokens)),
            "file_order": 1.0 - float(lengths.sum()) / sum(in_order), "texts": len(lengths),
            "tokens": int(lengths.sum())}


def bench_match_stage(tokenizer, texts: list[str], sizes: LMSizes, repeats: int) -> dict:
    """Seconds of one ``match_curve`` on the first MLP layer of two random-init GPT-2 small-width models."""
    import torch

    from ..extract.tokens import extract_tokens
    from ..match import match_curve
    from ..probes.text import make_text_probe
    from ..probes.token_rows import TokenRows
    from ..store import ActivationKey, Store, read_activations

    probe = make_text_probe("fortunes", texts=texts, tokenizer=tokenizer, n_examples=sizes.match_texts,
                            max_length=sizes.max_length,
                            tokens=TokenRows(rows={"rows": sizes.match_rows, "repeats": 1, "seed": 0}))
    layer = "transformer.h.0.mlp.act"
    with tempfile.TemporaryDirectory() as folder:
        store = Store(folder)
        started = time.perf_counter()
        for seed in (0, 1):
            extract_tokens(store, _gpt2(len(tokenizer), sizes.match_embd, 1, sizes.max_length, seed), f"small{seed}",
                           probe, [layer])
        extracted = time.perf_counter() - started
        a, b = (read_activations(store, ActivationKey(probe.id, f"small{seed}", layer)) for seed in (0, 1))
    torch.set_num_threads(os.cpu_count() or 1)
    seconds, runs = median_time(lambda: match_curve(a, b), repeats)
    return {"seconds": seconds, "runs": runs, "shape": a.shape, "extract_seconds": extracted}


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main(argv: list[str] | None = None) -> int:
    """``raymatch bench lm [--quick] [--repeats N]``: print the three measurements with their baselines."""
    parser = argparse.ArgumentParser(prog="raymatch bench lm", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run; targets refer to full sizes)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    args = parser.parse_args(argv)
    import torch

    from ..extract.tokens import token_layers
    from ..probes.text import make_text_probe
    from ..probes.token_rows import TokenRows
    from ..train.causal_lm import read_corpus, train_tokenizer

    sizes, repeats = (QUICK if args.quick else LMSizes()), max(1, args.repeats)
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"raymatch bench lm — {machine()}\n")
    texts = read_corpus()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = train_tokenizer(texts, folder, vocab_size=2048)
    corpus = make_text_probe("fortunes", texts=texts, tokenizer=tokenizer, max_length=sizes.max_length)
    padding = bench_padding(corpus.lengths)
    probe = make_text_probe("fortunes", texts=texts, tokenizer=tokenizer, n_examples=sizes.n_texts, seed=0,
                            max_length=sizes.max_length,
                            tokens=TokenRows(rows={"rows": sizes.rows, "repeats": 1, "seed": 0}))
    model = _gpt2(len(tokenizer), sizes.n_embd, sizes.n_layer, sizes.max_length, 0)
    layers = token_layers(model, ["transformer.h.*.mlp.act", "hidden_states"])
    extraction = bench_extraction(model, probe, layers, repeats)
    print(f"1. token rows: GPT-2 {sizes.n_layer} × {sizes.n_embd} (random init), {sizes.n_texts:,} fortunes at "
          f"max_length {sizes.max_length} ({extraction[0]['tokens']:,} tokens), length-bucketed batches")
    print(f"{'what':<64} | {'median s':>8} | runs | {'tokens/s':>9} | vs bare forward")
    base = extraction[0]["seconds"]
    for row in extraction:
        ratio = base / row["seconds"]
        verdict = "" if row is extraction[0] else f" (target ≥ 80 %: {_verdict(ratio >= 0.8)})"
        print(f"{row['what']:<64} | {row['seconds']:>8.3f} | {row['runs']:>4} | "
              f"{row['tokens'] / row['seconds']:>9,.0f} | {100 * ratio:.0f} %{verdict}")
    print(f"\n2. padding on the corpus ({padding['texts']:,} fortunes, {padding['tokens']:,} tokens at max_length "
          f"{sizes.max_length}, batches of ≤ 64 texts / 16,384 tokens): length-bucketed "
          f"{100 * padding['bucketed']:.1f} % (target ≤ 15 %: {_verdict(padding['bucketed'] <= 0.15)}); "
          f"in file order {100 * padding['file_order']:.1f} %")
    match = bench_match_stage(tokenizer, texts, sizes, 1 if not args.quick else repeats)
    print(f"\n3. match stage: match_curve on transformer.h.0.mlp.act of two random-init GPT-2 small-width models "
          f"(n_embd {sizes.match_embd}): {match['shape'][1]:,} + {match['shape'][1]:,} neurons over "
          f"{match['shape'][0]:,} token rows: {match['seconds']:.2f} s per curve (median of {match['runs']}; "
          f"extracting both took {match['extract_seconds']:.1f} s)")
    return 0
