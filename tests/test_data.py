from __future__ import annotations

import dataclasses
import json

import pytest

from embtune_utils import config, data


def test_answer_offsets_are_checked_and_repaired():
    text = "Alpha beta gamma. Delta epsilon."
    assert data._locate_answer(text, "beta", 6) == (6, 10, "exact")
    assert data._locate_answer(text, " beta", 6) == (6, 10, "stripped")  # COVID-QA's leading-space answers
    assert data._locate_answer(text, "Delta", 2) == (18, 23, "relocated")
    with pytest.raises(data.DataError, match="does not occur"):
        data._locate_answer(text, "zeta", 0)


def test_covidqa_has_the_documented_counts():
    articles = data.load_covidqa()
    assert len(articles) == 98
    assert sum(len(a["questions"]) for a in articles) == 1380
    assert len({a["doc_id"] for a in articles}) == 98


def test_every_repaired_answer_span_holds_the_answer():
    raw = data.read_json(config.data_dir() / "covid-qa" / data.COVIDQA_FILE)
    answers = {
        str(qa["id"]): qa["answers"][0]["text"].strip()
        for entry in raw["data"]
        for p in entry["paragraphs"]
        for qa in p["qas"]
    }
    for article in data.load_covidqa():
        for q in article["questions"]:
            assert article["text"][q["answer_start"] : q["answer_end"]] == answers[q["id"]]


def test_chunks_fit_the_model_and_cover_the_text(articles, model):
    text = articles[0]["text"]
    spans = data.chunk_spans(text, model.tokenizer, chunk_tokens=120, overlap=20)
    assert len(spans) > 5
    for start, end in spans:
        n_tokens = len(model.tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        assert n_tokens <= 120 + 2  # re-tokenising a cut piece may differ by a piece at the edges
        assert start == 0 or not text[start - 1].isalnum() or not text[start].isalnum()  # no cut inside a word
    assert spans[0][0] == 0 and spans[-1][1] >= len(text.rstrip()) - 1
    for (s1, e1), (s2, _) in zip(spans, spans[1:]):
        assert s2 < e1  # neighbours overlap
        assert s2 > s1


def test_chunking_is_deterministic_and_rejects_bad_overlap(articles, model):
    a = data.chunk_articles(articles[:2], model.tokenizer)
    b = data.chunk_articles(articles[:2], model.tokenizer)
    assert a == b and a[0]["chunk_id"] == f"{articles[0]['doc_id']}-000"
    with pytest.raises(data.DataError, match="lower the overlap"):
        data.chunk_spans("some text", model.tokenizer, chunk_tokens=10, overlap=10)


def test_labels_mark_the_chunks_that_hold_the_answer():
    article = {
        "doc_id": "d",
        "text": "0123456789" * 3,
        "questions": [
            {"id": "in", "answer_start": 2, "answer_end": 5},
            {"id": "cross", "answer_start": 8, "answer_end": 12},
            {"id": "both", "answer_start": 10, "answer_end": 11},
        ],
    }
    chunks = [
        {"chunk_id": "d-0", "doc_id": "d", "char_start": 0, "char_end": 10},
        {"chunk_id": "d-1", "doc_id": "d", "char_start": 9, "char_end": 20},
    ]
    qrels, stats = data.label_questions([article], chunks)
    assert qrels == {"in": {"d-0": 1}, "cross": {"d-0": 1, "d-1": 1}, "both": {"d-1": 1}}
    assert stats["answer crosses a chunk boundary"] == 1


def test_split_is_by_article_seeded_and_disjoint():
    ids = [str(i) for i in range(100)]
    split = data.split_articles(ids)
    assert split == data.split_articles(list(reversed(ids)))
    assert split != data.split_articles(ids, seed=1)
    counts = {s: list(split.values()).count(s) for s in data.SPLITS}
    assert counts == {"train": 60, "dev": 10, "test": 30}


def test_course_beir_keeps_each_article_in_one_split(tiny_beir):
    seen: dict[str, str] = {}
    for split, qrels in tiny_beir.qrels.items():
        for qid, rels in qrels.items():
            doc = tiny_beir.query_meta[qid]["doc_id"]
            assert seen.setdefault(doc, split) == split
            assert all(tiny_beir.corpus[cid]["metadata"]["doc_id"] == doc for cid in rels)
    assert data.doc_split(tiny_beir) == seen


def test_beir_round_trip(tiny_beir, tmp_path):
    folder = data.write_beir(tiny_beir, tmp_path / "beir")
    back = data.load_beir(folder)
    assert back.corpus == tiny_beir.corpus
    assert back.queries == tiny_beir.queries
    assert back.qrels == {s: q for s, q in tiny_beir.qrels.items()}
    assert back.query_meta == tiny_beir.query_meta
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_text_folder_reads_txt_and_md(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("First document.")
    (tmp_path / "sub" / "b.md").write_text("# Second\nText.")
    (tmp_path / "skip.pdf").write_bytes(b"%PDF")
    docs = data.load_text_folder(tmp_path)
    assert set(docs) == {"a.txt", "sub/b.md"} and docs["a.txt"]["title"] == "a"


def test_hf_loader_reads_a_local_dataset(tmp_path):
    rows = [{"id": "x", "title": "T", "body": "Some text."}, {"id": "y", "title": "U", "body": "More."}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = data.load_hf_corpus("json", data_files=str(tmp_path / "d.jsonl"), text_column="body", id_column="id")
    assert docs == {
        "x": {"title": "T", "text": "Some text.", "metadata": {}},
        "y": {"title": "U", "text": "More.", "metadata": {}},
    }


def test_fast_mode_slices_articles_and_test_questions(tiny_beir, monkeypatch):
    monkeypatch.setattr(
        config,
        "_SETTINGS",
        {
            **config._SETTINGS,
            "fast": dataclasses.replace(config.settings("fast"), max_articles=2, max_test_queries=3),
        },
    )
    small = data.slice_for_mode(tiny_beir, "fast")
    assert len({c["metadata"]["doc_id"] for c in small.corpus.values()}) <= 3
    assert len(small.qrels.get("test", {})) <= 3
    assert set(small.queries) == {q for rels in small.qrels.values() for q in rels}
    assert data.slice_for_mode(tiny_beir, "default") is tiny_beir


def test_course_data_is_cached_and_complete(model):
    beir = data.course_data(model.tokenizer, mode="default")
    stats = data.course_stats()
    assert stats["articles"] == 98 and stats["questions"] == 1380
    assert sum(stats["questions_per_split"].values()) == 1380
    assert len(beir.corpus) == stats["chunks"]
    assert sum(stats["labels"].values()) == 1380


def test_general_check_set_is_shipped_and_sound():
    beir = data.general_check()
    assert len(beir.queries) == len(beir.qrels["test"]) >= 70 and len(beir.corpus) > 5 * len(beir.queries)
    assert all(len(rels) == 1 and set(rels) <= set(beir.corpus) for rels in beir.qrels["test"].values())
    for qid, rels in beir.qrels["test"].items():  # the title and its underline were dropped from the passage
        assert "*****" not in beir.corpus[next(iter(rels))]["text"][: len(beir.queries[qid]) + 20]
    built = data.python_docs_check()
    assert len(set(built.queries) & set(beir.queries)) > 0.9 * len(beir.queries)  # rebuildable from this Python
