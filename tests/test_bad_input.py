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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data.DataError) as err:
        data.load_hf_corpus("some-user/some-dataset-that-is-not-cached")
    assert "connect to the Hugging Face Hub, or export it" in one_line(err)
