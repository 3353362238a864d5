"""The GPU-cluster study files of docs/language-models.md (issue 22, point 5), validated offline by ``raymatch plan``:
a Hugging Face cache laid out as the Hub's holds tiny models under the exact ids and revisions the files name
(MultiBERTs: 25 BERT seeds; PolyPythias: 9 Pythia seeds × 4 revisions), one tokenizer each, positions as the real
models'. Only the store and the probe's texts (an ``s3://`` bucket in the files) are replaced by local ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raymatch.cli import main
from raymatch.study import load_study

from .lm_helpers import bert, neox, save_model, sentences, write_hub_repo, write_tokenizer

EXAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "examples"

pytestmark = pytest.mark.slow  # 61 tiny models written into a Hub cache


def tiny_bert(seed, vocab):
    from transformers import BertConfig, BertForMaskedLM

    model = bert(seed, vocab)
    config = BertConfig(**{**model.config.to_dict(), "max_position_embeddings": 512})  # BERT-base's positions
    return BertForMaskedLM(config).eval()


def tiny_pythia(seed, vocab):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = neox(seed, vocab)
    return GPTNeoXForCausalLM(GPTNeoXConfig(**{**model.config.to_dict(), "max_position_embeddings": 2048})).eval()


@pytest.fixture
def local(tmp_path, monkeypatch):
    """The study file with a local store and texts, run from an empty folder with the Hub cache of ``tmp_path``."""
    texts = tmp_path / "english.jsonl"
    texts.write_text("\n".join(json.dumps({"text": text}) for text in sentences(2400, seed=11)))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)

    def localised(name: str) -> str:
        data = yaml.safe_load((EXAMPLES / name).read_text())
        data["store"] = {"uri": f"file://{tmp_path / 'store'}"}
        data["probe"]["text"] = str(texts)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    return localised


def test_the_multiberts_study_plans_offline(tmp_path, local, capsys):
    tokenizer = write_tokenizer(tmp_path / "bert-tokenizer", template=True)
    for seed in range(25):
        folder = save_model(tiny_bert(seed, len(tokenizer)), tmp_path / "models" / f"multiberts-{seed}", tokenizer)
        write_hub_repo(tmp_path / "hub", f"google/multiberts-seed_{seed}", {"main": folder})
    path = local("multiberts.yaml")
    assert main(["plan", path]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "extract       0     25" in out
    study = load_study(path)
    assert study.layer_names == ("bert.encoder.layer.0.intermediate", "bert.encoder.layer.1.intermediate",
                                 "hidden_states.1", "hidden_states.2")
    assert study.resources.gpus_per_actor == 1 and study.architecture.model_class == "AutoModelForMaskedLM"
    probe = study.text_probe
    assert {probe.pieces[s][p] for s, p in probe.rows(0)}.isdisjoint({"[CLS]", "[SEP]"})  # special: no rows
    assert {probe.pieces[s][0] for s in range(len(probe.texts))} == {"[CLS]"}


def test_the_polypythias_study_plans_offline(tmp_path, local, capsys):
    tokenizer = write_tokenizer(tmp_path / "neox-tokenizer")
    revisions = ("step1000", "step10000", "step36000", "step143000")
    for seed in range(1, 10):
        folders = {revision: save_model(tiny_pythia(100 * seed + index, len(tokenizer)),
                                        tmp_path / "models" / f"pythia-{seed}-{revision}", tokenizer)
                   for index, revision in enumerate(revisions)}
        write_hub_repo(tmp_path / "hub", f"EleutherAI/pythia-160m-seed{seed}", folders)
    path = local("polypythias.yaml")
    assert main(["plan", path]) == 0, capsys.readouterr().err
    assert "extract       0     36" in capsys.readouterr().out  # 9 seeds × 4 revisions
    study = load_study(path)
    assert study.architecture.dtype == "float16" and study.layer_names[0] == "gpt_neox.layers.0.mlp.act"
