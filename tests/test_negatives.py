from __future__ import annotations

import numpy as np
import pytest

from embtune_utils import data, evaluate, negatives


@pytest.fixture(scope="module")
def pairs(tiny_beir):
    return data.expert_pairs(tiny_beir, "train")[:12]


def _doc(corpus, cid):
    return corpus[cid]["metadata"]["doc_id"]


def test_positives_by_query_groups_every_positive():
    pairs = [{"query": "q", "chunk_id": "a"}, {"query": "q", "chunk_id": "b"}, {"query": "r", "chunk_id": "a"}]
    assert negatives.positives_by_query(pairs) == {"q": {"a", "b"}, "r": {"a"}}


def test_random_negatives_never_a_positive_and_seeded(tiny_beir):
    pairs = [{"query": "q", "chunk_id": c} for c in list(tiny_beir.corpus)[:3]]
    rows = negatives.random_negatives(pairs, list(tiny_beir.corpus), n=4, seed=1)
    positives = {p["chunk_id"] for p in pairs}
    for r in rows:
        assert len(r["negatives"]) == len(set(r["negatives"])) == 4
        assert not positives & set(r["negatives"])  # all three chunks are positives of the same query
    assert rows == negatives.random_negatives(pairs, list(tiny_beir.corpus), n=4, seed=1)
    assert rows != negatives.random_negatives(pairs, list(tiny_beir.corpus), n=4, seed=2)


def test_bm25_negatives_follow_the_bm25_ranking(tiny_beir, pairs):
    rows = negatives.bm25_negatives(pairs, tiny_beir.corpus, n=3)
    skipped = negatives.bm25_negatives(pairs, tiny_beir.corpus, n=2, range_min=1)
    index = evaluate.bm25_index(tiny_beir.corpus)
    for r, s in zip(rows, skipped):
        ranked = [d for d, _ in evaluate.bm25_search(index, {"q": r["query"]}, k=20)["q"]]
        ranked = [d for d in ranked if d not in negatives.positives_by_query(pairs)[r["query"]]]
        assert r["negatives"] == ranked[:3]
        assert s["negatives"] == ranked[1:3]


def test_dense_negatives_are_the_top_cosine_non_positives(tiny_beir, pairs, model, tmp_path):
    rows = negatives.dense_negatives(pairs, model, tiny_beir.corpus, n=3, cache_folder=tmp_path)
    assert len(rows) == len(pairs)
    ids, texts = evaluate.doc_texts(tiny_beir.corpus)
    doc_emb = evaluate.encode(model, texts)
    for r in rows:
        sims = doc_emb @ evaluate.encode(model, [r["query"]])[0]
        ranked = [ids[i] for i in np.argsort(-sims) if ids[i] not in negatives.positives_by_query(pairs)[r["query"]]]
        assert r["negatives"] == ranked[:3]
        assert r["scores"][0] == pytest.approx(float(sims[ids.index(r["chunk_id"])]), abs=1e-4)


def test_margin_guard_keeps_negatives_below_the_positive(tiny_beir, pairs, model, tmp_path):
    rows = negatives.dense_negatives(pairs, model, tiny_beir.corpus, n=2, absolute_margin=0.1, cache_folder=tmp_path)
    assert 0 < len(rows) <= len(pairs)
    for r in rows:
        assert all(s <= r["scores"][0] - 0.1 + 1e-6 for s in r["scores"][1:])


def test_other_articles_only_drops_same_article_negatives(tiny_beir, pairs):
    rows = negatives.bm25_negatives(pairs, tiny_beir.corpus, n=10)
    assert any(_doc(tiny_beir.corpus, c) == _doc(tiny_beir.corpus, r["chunk_id"]) for r in rows for c in r["negatives"])
    kept = negatives.other_articles_only(rows, tiny_beir.corpus, n=2)
    for r in kept:
        assert 0 < len(r["negatives"]) <= 2
        assert all(_doc(tiny_beir.corpus, c) != _doc(tiny_beir.corpus, r["chunk_id"]) for c in r["negatives"])


def test_audit_counts_same_article_and_answer_text():
    corpus = {
        "a-000": {"text": "The virus binds ACE2 receptors.", "metadata": {"doc_id": "a"}},
        "a-001": {"text": "Other text.", "metadata": {"doc_id": "a"}},
        "b-000": {"text": "ace2 receptor binding is shown", "metadata": {"doc_id": "b"}},
        "c-000": {"text": "Unrelated.", "metadata": {"doc_id": "c"}},
    }
    rows = [{"query": "Which receptor?", "chunk_id": "a-000", "negatives": ["a-001", "b-000", "c-000"]}]
    counts = negatives.audit(rows, corpus, {"Which receptor?": "ACE2"})
    assert counts == {"rows": 1, "negatives": 3, "same article": 1, "contains answer": 1, "rows with a suspect": 1}
    assert negatives.audit(rows, corpus)["contains answer"] == 0  # no answers known: only the article check


def test_scores_are_cosines_of_rows():
    doc_emb = np.eye(3, dtype=np.float32)
    rows = [{"query": "q", "chunk_id": "x", "negatives": ["y", "z"]}]
    s = negatives.scores(rows, np.array([[0.6, 0.8, 0.0]]), doc_emb, ["x", "y", "z"])
    assert s["positive"].tolist() == pytest.approx([0.6]) and s["negative"].tolist() == pytest.approx([0.8, 0.0])


def test_to_dataset_n_tuple_columns(tiny_beir, pairs):
    rows = negatives.bm25_negatives(pairs, tiny_beir.corpus, n=2)
    ds = negatives.to_dataset(rows, tiny_beir.corpus)
    assert ds.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert ds[0]["negative_2"] == tiny_beir.corpus[rows[0]["negatives"][1]]["text"]
    assert negatives.to_dataset(rows, tiny_beir.corpus, n=0).column_names == ["anchor", "positive"]
    with pytest.raises(negatives.NegativesError, match="fewer than 3"):
        negatives.to_dataset(rows, tiny_beir.corpus, n=3)


def test_bad_requests_name_the_fix(tiny_beir, pairs):
    with pytest.raises(negatives.NegativesError, match="at least 1"):
        negatives.random_negatives(pairs, list(tiny_beir.corpus), n=0)
    with pytest.raises(negatives.NegativesError, match="not in the corpus"):
        negatives.bm25_negatives(pairs, {k: v for k, v in list(tiny_beir.corpus.items())[:2]}, n=1)


def test_rows_round_trip_through_artifacts(home):
    rows = [{"query": "q", "chunk_id": "a", "negatives": ["b"], "scores": [0.5, 0.1]}]
    assert negatives.load_rows("x") is None
    negatives.save_rows(rows, "x")
    assert negatives.load_rows("x") == [{"query": "q", "chunk_id": "a", "negatives": ["b"]}]


def _recipe_call_keywords() -> dict:
    """The keyword arguments of mine_hard_negatives in notebook 03's cell tagged "recipe" (and its ** helper)."""
    import ast
    import json

    from embtune_utils import config

    nb = json.loads((config.repo_root() / "notebooks" / "03_negative_mining.ipynb").read_text())
    cells = [c for c in nb["cells"] if "recipe" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, "notebook 03 needs exactly one cell tagged 'recipe'"
    source = "".join(cells[0]["source"])
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))  # %%capture
    calls = [
        n
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "mine_hard_negatives"
    ]
    assert len(calls) == 1, "the recipe cell calls mine_hard_negatives once"
    out = {kw.arg: ast.literal_eval(kw.value) for kw in calls[0].keywords if kw.arg not in (None, "corpus")}
    out["**"] = [ast.unparse(kw.value) for kw in calls[0].keywords if kw.arg is None]
    return out


def test_notebook_recipe_cell_mines_with_the_package_recipe():
    keywords = _recipe_call_keywords()
    assert keywords.pop("**") == ["negatives.mining_plumbing(model)"]
    assert keywords == negatives.recipe_mining_args()
    assert keywords["num_negatives"] == negatives.RECIPE["candidates"]


def test_mining_is_quiet_and_matches_the_recipe_args(tiny_beir, pairs, model, tmp_path, capsys):
    two = [{"query": pairs[0]["query"], "chunk_id": c} for c in list(tiny_beir.corpus)[:2]]  # 2 positives: ST prints
    negatives.dense_negatives(pairs + two, model, tiny_beir.corpus, n=2, cache_folder=tmp_path)
    out = capsys.readouterr()
    assert "positives per query" not in out.out and "Batches" not in out.err + out.out
    plumbing = negatives.mining_plumbing(model)
    assert plumbing["verbose"] is False and set(plumbing) == {"batch_size", "verbose", "cache_folder"}


def test_mining_cache_is_per_model_weights(model):
    import copy

    import torch

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(1.0)  # a "fine-tuned" model with the same base-model name
    assert negatives.mining_plumbing(other)["cache_folder"] != negatives.mining_plumbing(model)["cache_folder"]
