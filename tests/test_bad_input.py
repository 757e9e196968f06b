"""Bad input gives a one-line error that names the problem and the fix."""

from __future__ import annotations

import json

import pytest

from embtune_utils import config, data


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    assert ":" in message  # "<problem>: <fix>"
    return message


def write_beir(folder, corpus, queries=(), qrels=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    if qrels is not None:
        (folder / "qrels").mkdir(exist_ok=True)
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


DOCS = [{"_id": "d1", "title": "", "text": "one"}, {"_id": "d2", "title": "", "text": "two"}]
QUERIES = [{"_id": "q1", "text": "which one?"}]


def test_missing_data_folder(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_beir(tmp_path / "nope")
    assert "does not exist: check the path" in one_line(err)


def test_missing_corpus_file(tmp_path):
    with pytest.raises(data.DataError) as err:
        data.load_beir(tmp_path)
    assert "corpus.jsonl does not exist" in one_line(err)


def test_qrel_to_unknown_doc(tmp_path):
    folder = write_beir(tmp_path, DOCS, QUERIES, "q1\td9\t1\n")
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "corpus id 'd9', which is not in corpus.jsonl: fix or drop it" in one_line(err)


def test_qrel_to_unknown_query(tmp_path):
    folder = write_beir(tmp_path, DOCS, QUERIES, "q7\td1\t1\n")
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "query id 'q7'" in one_line(err)


def test_duplicate_ids(tmp_path):
    folder = write_beir(tmp_path, [*DOCS, {"_id": "d1", "text": "again"}], QUERIES)
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "1 duplicate _id(s), e.g. 'd1': make every _id unique" in one_line(err)


def test_empty_corpus(tmp_path):
    folder = write_beir(tmp_path, [], QUERIES)
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "is empty: a corpus needs at least one document" in one_line(err)


def test_empty_text_in_corpus(tmp_path):
    folder = write_beir(tmp_path, [*DOCS, {"_id": "d3", "text": "  "}], QUERIES)
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "empty text(s), e.g. 'd3'" in one_line(err)


def test_wrong_beir_columns(tmp_path):
    folder = write_beir(tmp_path, [{"id": "d1", "body": "x"}])
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "lacks _id, text: BEIR rows need _id, text (found body, id)" in one_line(err)


def test_non_utf8_file(tmp_path):
    write_beir(tmp_path, DOCS)
    (tmp_path / "corpus.jsonl").write_bytes('{"_id": "d1", "text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(data.DataError) as err:
        data.load_beir(tmp_path)
    assert "is not UTF-8" in one_line(err) and "iconv" in str(err.value)


def test_non_utf8_text_file(tmp_path):
    (tmp_path / "a.txt").write_bytes("na\xefve".encode("latin-1"))
    with pytest.raises(data.DataError) as err:
        data.load_text_folder(tmp_path)
    assert "a.txt is not UTF-8" in one_line(err)


def test_malformed_jsonl_line(tmp_path):
    write_beir(tmp_path, DOCS)
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{not json\n')
    with pytest.raises(data.DataError) as err:
        data.load_beir(tmp_path)
    assert "corpus.jsonl:2 is not valid JSON" in one_line(err)


def test_qrels_with_wrong_column_count(tmp_path):
    folder = write_beir(tmp_path, DOCS, QUERIES, "q1\td1\n")
    with pytest.raises(data.DataError) as err:
        data.load_beir(folder)
    assert "has 2 columns" in one_line(err)


def test_text_folder_without_documents(tmp_path):
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(data.DataError) as err:
        data.load_text_folder(tmp_path)
    assert "has no .txt or .md files" in one_line(err)


def test_unknown_mode(monkeypatch):
    monkeypatch.setenv("EMBTUNE_MODE", "quick")
    with pytest.raises(config.ConfigError) as err:
        config.get_mode()
    assert "use one of fast, default, full" in one_line(err)


def test_hf_dataset_unreachable(monkeypatch):
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # datasets read HF_HUB_OFFLINE when it was imported (by sentence-transformers): set its copy too, or this test
    # waits about 20 s for the network's timeouts before it gets the same error
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(data.DataError) as err:
        data.load_hf_corpus("some-user/some-dataset-that-is-not-cached")
    assert "connect to the Hugging Face Hub, or export it" in one_line(err)


# ---------------------------------------------------------------- documents, config and generation


def cli_fails(tmp_path, capsys, *argv: str) -> str:
    """Run `embtune ARGV`; assert exit 2, one line on stderr, no traceback and nothing written to --out."""
    from embtune_utils import cli

    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    return err


def text_corpus(folder, n: int):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"doc{i}.txt").write_text(f"Document {i} says that coronaviruses are enveloped RNA viruses.")
    return folder


def test_corpus_of_one_document(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = cli_fails(tmp_path, capsys, "run", "--corpus", str(text_corpus(tmp_path / "docs", 1)))
    assert "has 1 document(s): at least 3 are needed" in err


def test_a_ten_megabyte_document_is_chunked_whole(tmp_path, model):
    (tmp_path / "big.txt").write_text("Coronaviruses bind the ACE2 receptor in bats and humans. " * 180_000)
    text = data.load_text_folder(tmp_path)["big.txt"]["text"]
    assert len(text.encode()) > 10_000_000
    spans = data.chunk_spans(text, model.tokenizer, 200, 32)  # handled, not an error: every character is kept
    assert spans[0][0] == 0 and spans[-1][1] == len(text.rstrip())
    assert all(a[1] > b[0] for a, b in zip(spans, spans[1:]))  # neighbours overlap: no gap between chunks


def test_blank_mode(monkeypatch):
    monkeypatch.setenv("EMBTUNE_MODE", "  ")
    with pytest.raises(config.ConfigError) as err:
        config.get_mode()
    assert "is not a mode: use one of fast, default, full" in one_line(err)


def test_local_weights_override_to_a_missing_file(monkeypatch, tmp_path):
    from embtune_utils import synth

    monkeypatch.setenv("EMBTUNE_LOCAL_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(synth.GenerationError) as err:
        synth.local_model_file()
    assert "is not a file: point it at a copy of SmolLM2" in one_line(err)


def test_no_api_key_for_the_openai_generator(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    corpus = text_corpus(tmp_path / "docs", 3)
    err = cli_fails(tmp_path, capsys, "run", "--corpus", str(corpus), "--generator", "openai")
    assert "OPENAI_API_KEY is not set: set it" in err


def test_base_url_without_a_scheme(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = text_corpus(tmp_path / "docs", 3)
    argv = ["run", "--corpus", str(corpus), "--generator", "openai-compatible", "--base-url", "localhost:8000/v1"]
    assert "has no http:// or https://: write it whole, e.g. http://localhost:8000/v1" in cli_fails(
        tmp_path, capsys, *argv
    )


def test_openai_compatible_without_a_url(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    corpus = text_corpus(tmp_path / "docs", 3)
    err = cli_fails(tmp_path, capsys, "run", "--corpus", str(corpus), "--generator", "openai-compatible")
    assert "needs --base-url (or OPENAI_BASE_URL)" in err


def test_model_reply_with_too_many_or_no_queries():
    from embtune_utils import synth

    assert synth.parse_queries('{"queries": ["A?", "B?", "C?", "D?", "E?", "F?"]}') == ["A?", "B?", "C?"]
    with pytest.raises(synth.GenerationError) as err:
        synth.parse_queries("Sure! Here is a summary of the passage instead.")
    one_line(err)


# ---------------------------------------------------------------- training


def test_empty_training_set(tmp_path, model):
    from datasets import Dataset

    from embtune_utils import losses, train

    empty = Dataset.from_dict({"anchor": [], "positive": []})
    args = train.training_args(tmp_path, batch_size=4)
    with pytest.raises(train.TrainError) as err:
        train.short_run(model, losses.make_loss("mnrl", model), empty, args)
    assert "0 training rows is less than one batch of 4: use more rows or a smaller batch_size" in one_line(err)


def test_batch_larger_than_the_data(tmp_path, model):
    from datasets import Dataset

    from embtune_utils import losses, train

    rows = Dataset.from_dict({"anchor": ["a?", "b?"], "positive": ["A.", "B."]})
    args = train.training_args(tmp_path, batch_size=8)
    with pytest.raises(train.TrainError) as err:
        train.short_run(model, losses.make_loss("mnrl", model), rows, args)
    assert "2 training rows is less than one batch of 8" in one_line(err)


def test_dev_split_with_no_positives(tiny_beir):
    from embtune_utils import train

    no_dev = data.Beir(tiny_beir.corpus, tiny_beir.queries, {k: v for k, v in tiny_beir.qrels.items() if k != "dev"})
    with pytest.raises(train.TrainError) as err:
        train.ir_evaluator(no_dev, "dev")
    assert "The 'dev' split has no questions with relevant chunks: check the qrels" in one_line(err)


def test_unknown_training_source(tiny_beir, model):
    from embtune_utils import train

    with pytest.raises(train.TrainError) as err:
        train.training_pairs(tiny_beir, model, "wikipedia")
    assert "Unknown training source 'wikipedia': choose one of" in one_line(err)


# ---------------------------------------------------------------- deployment


def test_index_dimension_mismatch():
    import numpy as np

    from embtune_utils import deploy

    docs = np.random.default_rng(0).normal(size=(20, 64)).astype(np.float32)
    index = deploy.build_index(docs / np.linalg.norm(docs, axis=1, keepdims=True), "flat")
    with pytest.raises(deploy.DeployError) as err:
        index.search(np.ones((1, 32), dtype=np.float32))
    assert "for an index of 64-dim vectors: encode the queries" in one_line(err)


def test_search_with_a_missing_artifact(tmp_path, capsys):
    from embtune_utils import cli

    assert cli.main(["search", "covid", "--artifact", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no index/metadata.json: it is not a deployment artifact" in err and "\n" not in err
