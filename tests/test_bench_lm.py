"""``raymatch bench lm`` at smoke sizes: its measurements run and its table prints (the figures are not judged)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raymatch.bench import main as bench_main
from raymatch.bench.lm import bench_extraction, bench_padding
from raymatch.extract.tokens import token_layers
from raymatch.probes import TokenRows, make_text_probe
from raymatch.train.causal_lm import FORTUNES

from .lm_helpers import gpt2, sentences, write_tokenizer


def test_extraction_and_padding_rows(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tokenizer")
    probe = make_text_probe("s", texts=sentences(30), tokenizer=tokenizer, max_length=32,
                            tokens=TokenRows(rows={"rows": 100, "repeats": 1, "seed": 0}))
    model = gpt2(0, len(tokenizer))
    rows = bench_extraction(model, probe, token_layers(model, ["transformer.h.*.mlp.act"]), repeats=1, batch_size=8)
    assert [row["tokens"] for row in rows] == [int(probe.lengths.sum())] * 2 and all(row["seconds"] > 0 for row in rows)
    assert "100 token rows" in rows[1]["what"]
    padding = bench_padding(np.array([5, 50, 5, 50]), batch_size=2)
    assert padding["bucketed"] == 0.0 and padding["file_order"] == pytest.approx(0.45)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FORTUNES), reason="Debian's fortunes is not installed")
def test_bench_lm_quick_prints_every_row(capsys):
    assert bench_main(["lm", "--quick", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("bare batched forward", "extract + store", "padding on the corpus", "match stage", "per curve"):
        assert text in out
