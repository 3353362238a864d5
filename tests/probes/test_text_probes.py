"""Text probes: four formats read through the store's filesystem (local and moto S3), a seeded choice of non-empty
texts, tokenisation and truncation, the probe id, and the token rows drawn from the token layout alone."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymatch.probes.text import (
    TextProbeError,
    check_max_length,
    choose_texts,
    make_text_probe,
    read_texts,
)
from raymatch.probes.token_rows import (
    TokenRows,
    batch_ranges,
    candidate_rows,
    padding_share,
    processing_order,
    sample_token_rows,
)

from ..conftest import BUCKET, S3_KEY, S3_SECRET
from ..lm_helpers import sentences, write_tokenizer

TEXTS = ["first text", "", "second text here", "   ", "third", "fourth and last"]


def write_formats(folder):
    folder.mkdir(exist_ok=True)
    (folder / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (folder / "texts.jsonl").write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)))
    pq.write_table(pa.table({"body": TEXTS, "n": list(range(len(TEXTS)))}), folder / "texts.parquet")
    (folder / "texts.fortune").write_text("\n%\n".join(["first text", "", "second text here\nover two lines",
                                                         "third"]) + "\n")
    return {"lines": (folder / "texts.txt", None), "jsonl": (folder / "texts.jsonl", "body"),
            "parquet": (folder / "texts.parquet", "body"), "fortune": (folder / "texts.fortune", None)}


def test_every_format_reads_the_same_texts(tmp_path):
    files = write_formats(tmp_path)
    for fmt in ("lines", "jsonl", "parquet"):
        path, field = files[fmt]
        assert read_texts(str(path), fmt, field) == TEXTS
        assert read_texts(f"file://{path}", fmt, field) == TEXTS
    assert read_texts(str(files["fortune"][0]), "fortune") == ["first text", "", "second text here\nover two lines",
                                                              "third"]


def test_texts_on_s3_are_read_through_the_store(tmp_path, s3_store, moto_endpoint):
    files = write_formats(tmp_path)
    options = {"endpoint_url": moto_endpoint, "key": S3_KEY, "secret": S3_SECRET}
    for fmt, (path, field) in files.items():
        s3_store.write_bytes(f"probes/{path.name}", path.read_bytes())
        uri = f"s3://{BUCKET}/study/probes/{path.name}"
        assert read_texts(uri, fmt, field, store_options=options) == read_texts(str(path), fmt, field)
    with pytest.raises(TextProbeError, match=r"probe.text: s3://.*/absent.txt does not exist"):
        read_texts(f"s3://{BUCKET}/study/absent.txt", store_options=options)


def test_bad_text_files_get_one_error_naming_the_field(tmp_path):
    files = write_formats(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"body": "a"}\n{"body": 3}\n')
    (tmp_path / "broken.jsonl").write_text('{"body": "a"}\nnot json\n')
    pq.write_table(pa.table({"n": [1, 2]}), tmp_path / "numbers.parquet")
    cases = [
        (lambda: read_texts(str(tmp_path / "absent.txt")), r"probe.text: .*absent.txt does not exist"),
        (lambda: read_texts(str(files["lines"][0]), "csv"), r"probe.format: must be one of lines, jsonl"),
        (lambda: read_texts(str(files["jsonl"][0]), "jsonl"), r"probe.field: required by format jsonl"),
        (lambda: read_texts(str(files["lines"][0]), "lines", "body"), r"probe.field: not used by format lines"),
        (lambda: read_texts(str(files["jsonl"][0]), "jsonl", "text"), r"probe.field: line 1 of .* has no field"),
        (lambda: read_texts(str(tmp_path / "bad.jsonl"), "jsonl", "body"), r"'body' on line 2 of .* is a int"),
        (lambda: read_texts(str(tmp_path / "broken.jsonl"), "jsonl", "body"), r"line 2 of .* is not JSON"),
        (lambda: read_texts(str(files["parquet"][0]), "parquet", "text"), r"has no column 'text' \(columns: body, n"),
        (lambda: read_texts(str(tmp_path / "numbers.parquet"), "parquet", "n"), r"holds int64, not strings"),
        (lambda: read_texts(str(files["lines"][0]), "parquet", "body"), r"is not a Parquet file"),
    ]
    for call, message in cases:
        with pytest.raises(TextProbeError, match=message):
            call()


def test_a_seeded_choice_of_non_empty_texts_in_file_order():
    chosen, indices = choose_texts(TEXTS, None)
    assert chosen == ["first text", "second text here", "third", "fourth and last"] and indices.tolist() == [0, 2, 4, 5]
    two, where = choose_texts(TEXTS, 2, seed=3)
    assert two == [TEXTS[i] for i in where] and list(where) == sorted(where) and set(where) <= {0, 2, 4, 5}
    assert choose_texts(TEXTS, 2, seed=3)[0] == two
    assert {tuple(choose_texts(TEXTS, 2, seed=s)[0]) for s in range(10)} != {tuple(two)}
    with pytest.raises(TextProbeError, match=r"probe.n_examples: asks for 5 texts but t.txt has only 4 non-empty"):
        choose_texts(TEXTS, 5, source="t.txt")
    with pytest.raises(TextProbeError, match=r"probe.max_length: 100 is beyond the 64 positions of model m"):
        check_max_length(100, 64, "m")
    assert check_max_length(64, 64, "m") == 64


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {"right": write_tokenizer(root / "right"), "left": write_tokenizer(root / "left", padding_side="left"),
            "bert": write_tokenizer(root / "bert", template=True), "other": write_tokenizer(root / "o", vocab_size=330),
            "root": root}


def test_tokenised_probes_and_their_ids(tokenizers, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(sentences(30)))
    probe = make_text_probe(str(path), tokenizer=tokenizers["right"], n_examples=20, seed=1, max_length=24)
    assert len(probe.texts) == 20 and probe.lengths.max() == 24 and probe.lengths.min() < 24
    full = tokenizers["right"](probe.texts[int(np.argmax(probe.lengths))])["input_ids"]
    assert probe.input_ids[int(np.argmax(probe.lengths))].tolist() == full[:24]  # truncated, not dropped
    assert not any(mask.any() for mask in probe.special)
    assert probe.pieces[0] == tuple(tokenizers["right"].convert_ids_to_tokens(probe.input_ids[0].tolist()))
    copy = tmp_path / "elsewhere.txt"
    copy.write_bytes(path.read_bytes())
    same = make_text_probe(str(copy), tokenizer=str(tokenizers["root"] / "left"), n_examples=20, seed=1,
                           max_length=24)
    assert same.id == probe.id and same.padding_side == "left"  # padding side and place are no content
    others = [make_text_probe(str(path), tokenizer=tokenizers["right"], n_examples=20, seed=2, max_length=24),
              make_text_probe(str(path), tokenizer=tokenizers["right"], n_examples=20, seed=1, max_length=23),
              make_text_probe(str(path), tokenizer=tokenizers["other"], n_examples=20, seed=1, max_length=24),
              make_text_probe(str(path), tokenizer=tokenizers["right"], n_examples=20, seed=1, max_length=24,
                              tokens=TokenRows(pool="last"))]
    assert len({probe.id, *(other.id for other in others)}) == 5
    with pytest.raises(TextProbeError, match=r"probe.max_length: 128 is beyond the 64 positions of model gpt"):
        make_text_probe(str(path), tokenizer=tokenizers["right"], max_length=128, positions=64, model="gpt")


def test_special_tokens_are_marked(tokenizers, tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(sentences(5)))
    probe = make_text_probe(str(path), tokenizer=tokenizers["bert"], max_length=16)
    for ids, special, pieces in zip(probe.input_ids, probe.special, probe.pieces, strict=True):
        assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
        assert special.tolist() == [True] + [False] * (len(ids) - 2) + [True]


def layout(lengths, special_at=()):
    masks = [np.zeros(n, bool) for n in lengths]
    for sequence, position in special_at:
        masks[sequence][position] = True
    return masks


def test_rows_are_real_tokens_in_processing_order():
    masks = layout([3, 5, 2, 5], special_at=[(1, 0), (1, 4), (2, 1)])
    assert processing_order([3, 5, 2, 5]).tolist() == [1, 3, 0, 2]
    rows = candidate_rows(masks, TokenRows())
    assert rows.tolist() == [[1, 1], [1, 2], [1, 3], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4], [0, 0], [0, 1], [0, 2],
                             [2, 0]]
    assert len(candidate_rows(masks, TokenRows(special=True))) == 15
    assert candidate_rows(masks, TokenRows(pool="last")).tolist() == [[1, 3], [3, 4], [0, 2], [2, 0]]
    assert candidate_rows(masks, TokenRows(pool="last", special=True)).tolist() == [[1, 4], [3, 4], [0, 2], [2, 1]]
    assert candidate_rows(masks, TokenRows(pool="mean")).tolist() == [[1, -1], [3, -1], [0, -1], [2, -1]]
    with pytest.raises(ValueError, match=r"text 0 has no token that is not special"):
        candidate_rows(layout([1], special_at=[(0, 0)]), TokenRows(pool="mean"))


def test_row_samples_depend_on_the_layout_only():
    masks = layout(np.random.default_rng(0).integers(1, 30, size=40))
    tokens = TokenRows(rows={"rows": 100, "repeats": 3, "seed": 7})
    candidates = candidate_rows(masks, tokens)
    draws = [sample_token_rows(candidates, tokens, repeat) for repeat in range(3)]
    assert all(len(draw) == 100 for draw in draws)
    assert not np.array_equal(draws[0], draws[1])
    for draw in draws:  # a subset of the candidates, kept in their order
        index = [np.flatnonzero((candidates == row).all(axis=1))[0] for row in draw]
        assert index == sorted(index) and len(set(index)) == 100
    again = candidate_rows([mask.copy() for mask in masks], TokenRows(rows={"rows": 100, "repeats": 3, "seed": 7}))
    assert np.array_equal(sample_token_rows(again, tokens, 2), draws[2])
    assert np.array_equal(sample_token_rows(candidates, TokenRows(), 0), candidates)
    with pytest.raises(ValueError, match=r"rows.rows: asks for 100000 rows but the probe has only \d+ real tokens "
                                         r"\(special tokens excluded\)"):
        sample_token_rows(candidates, TokenRows(rows={"rows": 100_000}), 0)
    with pytest.raises(ValueError, match=r"tokens.pool: must be one of last, mean"):
        TokenRows(pool="max")
    with pytest.raises(ValueError, match=r"rows.rows: must be a positive integer"):
        TokenRows(rows={"rows": 0})


def test_length_buckets_keep_padding_low():
    lengths = np.random.default_rng(0).integers(1, 300, size=1000)
    ranges = batch_ranges(lengths, 32, 4096)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    ordered = lengths[processing_order(lengths)]
    assert all(ordered[start] * (stop - start) <= 4096 or stop - start == 1 for start, stop in ranges)
    assert padding_share(lengths, ranges) < 0.05
    assert padding_share([10, 5], [(0, 2)]) == pytest.approx(0.25)
