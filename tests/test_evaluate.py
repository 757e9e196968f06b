from __future__ import annotations

import math

import numpy as np
import pytest
from sentence_transformers.evaluation import InformationRetrievalEvaluator

from embtune_utils import evaluate


def test_metrics_by_hand():
    ranked = ["a", "x", "b", "y"]
    relevant = {"a": 1, "b": 1, "c": 1}
    assert evaluate.mrr_at_k(ranked, relevant, 10) == 1.0
    assert evaluate.mrr_at_k(["x", "y", "b"], relevant, 10) == pytest.approx(1 / 3)
    assert evaluate.mrr_at_k(["x", "y", "b"], relevant, 2) == 0.0
    assert evaluate.recall_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)
    assert evaluate.recall_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert evaluate.ndcg_at_k(ranked, relevant, 10) == pytest.approx(dcg / idcg)
    assert evaluate.map_at_k(ranked, relevant, 100) == pytest.approx((1 + 2 / 3) / 3)
    assert evaluate.ndcg_at_k(["x"], {}, 10) == 0.0


def test_evaluate_run_averages_and_counts_missing_queries_as_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": [("a", 0.9), ("b", 0.1)]}
    metrics = evaluate.evaluate_run(run, qrels)
    assert metrics["mrr@10"] == 0.5 and metrics["recall@1"] == 0.5
    assert set(metrics) == set(evaluate.METRICS)
    with pytest.raises(ValueError, match="No queries"):
        evaluate.evaluate_run(run, {})


def test_agrees_with_sentence_transformers_evaluator(model, tiny_beir):
    queries = tiny_beir.split_queries("train") | tiny_beir.split_queries("test")
    qrels = {**tiny_beir.qrels["train"], **tiny_beir.qrels["test"]}
    corpus_text = {cid: doc["text"] for cid, doc in tiny_beir.corpus.items()}
    st = InformationRetrievalEvaluator(
        queries,
        corpus_text,
        {q: set(r) for q, r in qrels.items()},
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1],
        precision_recall_at_k=[1, 5, 10, 100],
        map_at_k=[100],
        show_progress_bar=False,
        batch_size=16,
    )(model)
    ours = evaluate.evaluate_run(evaluate.dense_run(model, tiny_beir.corpus, queries), qrels)
    for name in evaluate.METRICS:
        kind, k = name.split("@")
        st_name = f"cosine_{kind}@{k}"
        assert ours[name] == pytest.approx(st[st_name], abs=1e-6), name
    assert len(qrels) > 20


def test_ir_evaluator_with_cached_corpus_embeddings_gives_the_same_scores(model, tiny_beir):
    """Notebook 06 hands the evaluator the course's cached corpus embeddings instead of letting it encode again."""
    import torch

    queries = tiny_beir.split_queries("test")
    corpus_text = {cid: doc["text"] for cid, doc in tiny_beir.corpus.items()}
    relevant = {q: set(r) for q, r in tiny_beir.qrels["test"].items()}
    evaluator = InformationRetrievalEvaluator(queries, corpus_text, relevant, name="t", show_progress_bar=False)
    cached = torch.from_numpy(evaluate.corpus_embeddings(model, tiny_beir.corpus, cache=False))
    fresh, reused = evaluator(model), evaluator(model, corpus_embeddings=cached)
    assert fresh.keys() == reused.keys() and "t_cosine_ndcg@10" in fresh
    assert all(reused[k] == pytest.approx(fresh[k], abs=1e-6) for k in fresh)


def test_flat_index_search_is_exact_cosine():
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(50, 8)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    queries = docs[:5] + 0.01
    run = evaluate.search_index(evaluate.flat_index(docs), [f"d{i}" for i in range(50)], list("abcde"), queries, 3)
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :3]
    assert [[d for d, _ in run[q]] for q in "abcde"] == [[f"d{i}" for i in row] for row in expected]


def test_bm25_ranks_keyword_matches_first():
    corpus = {
        "a": {"text": "Coronaviruses infect bats and camels."},
        "b": {"text": "Influenza vaccines are updated yearly."},
        "c": {"text": "Mother-to-child transmission of HIV."},
    }
    run = evaluate.bm25_run(corpus, {"q": "which vaccine is updated every year"}, k=3)
    assert run["q"][0][0] == "b"  # "vaccine" matches "vaccines" through stemming


def test_corpus_embeddings_are_cached(model, tiny_beir, monkeypatch):
    corpus = dict(list(tiny_beir.corpus.items())[:5])
    first = evaluate.corpus_embeddings(model, corpus)
    monkeypatch.setattr(evaluate, "encode", lambda *a, **k: pytest.fail("cache was not used"))
    assert np.array_equal(evaluate.corpus_embeddings(model, corpus), first)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_bootstrap_ci_brackets_the_mean():
    assert evaluate.bootstrap_ci([0.5] * 20) == (0.5, 0.5, 0.5)
    values = np.random.default_rng(0).random(200)
    mean, lo, hi = evaluate.bootstrap_ci(values)
    assert lo < mean < hi and hi - lo < 0.2
    assert evaluate.bootstrap_ci(values) == (mean, lo, hi)  # seeded
    with pytest.raises(ValueError, match="at least one"):
        evaluate.bootstrap_ci([])


def test_rrf_by_hand():
    a = {"q": [("d1", 9.0), ("d2", 5.0)]}
    b = {"q": [("d2", 0.9), ("d3", 0.1)]}
    fused = dict(evaluate.rrf([a, b], k=60)["q"])
    assert fused["d2"] == pytest.approx(1 / 62 + 1 / 61) and fused["d1"] == pytest.approx(1 / 61)
    assert evaluate.rrf([a, b])["q"][0][0] == "d2"  # found by both runs


def test_weighted_fusion_ends_are_the_runs():
    dense = {"q": [("d1", 0.9), ("d2", 0.5), ("d3", 0.1)]}
    sparse = {"q": [("d3", 12.0), ("d2", 7.0), ("d1", 1.0)]}
    assert [d for d, _ in evaluate.weighted_fusion(dense, sparse, 1.0)["q"]] == ["d1", "d2", "d3"]
    assert [d for d, _ in evaluate.weighted_fusion(dense, sparse, 0.0)["q"]] == ["d3", "d2", "d1"]
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        evaluate.weighted_fusion(dense, sparse, 1.5)


def test_tune_fusion_weight_picks_the_better_run():
    qrels = {"q1": {"d1": 1}, "q2": {"d1": 1}}
    dense = {q: [("d1", 0.9), ("d2", 0.1)] for q in qrels}
    sparse = {q: [("d2", 5.0), ("d1", 1.0)] for q in qrels}
    weight, scores = evaluate.tune_fusion_weight(dense, sparse, qrels)
    assert all(scores[w] == 1.0 for w in scores if w > 0.5) and all(scores[w] < 1.0 for w in scores if w < 0.5)
    assert weight >= 0.5  # the best score, and among equals the weight nearest 0.5


def test_fusion_ties_break_by_id_not_hash_order():
    run_a, run_b = {"q": [("x", 1.0)]}, {"q": [("y", 1.0)]}
    assert [d for d, _ in evaluate.rrf([run_a, run_b])["q"]] == ["x", "y"]
    assert [d for d, _ in evaluate.rrf([run_b, run_a])["q"]] == ["x", "y"]


def test_paired_test_detects_a_real_difference_and_not_noise():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 300)
    better = evaluate.paired_test(base + 0.1, base)
    assert better["mean"] == pytest.approx(0.1) and better["lo"] > 0 and better["p"] < 0.01 and better["wins"] == 300
    noise = evaluate.paired_test(base + rng.normal(0, 0.2, 300), base + rng.normal(0, 0.2, 300))
    assert noise["lo"] < 0 < noise["hi"] and noise["p"] > 0.05


def test_metrics_with_ci():
    per_query = {"a": {"ndcg@10": 1.0}, "b": {"ndcg@10": 0.0}}
    mean, lo, hi = evaluate.metrics_with_ci(per_query, ("ndcg@10",))["ndcg@10"]
    assert mean == 0.5 and 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_alignment_uniformity_and_spectrum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert evaluate.alignment(x, x) == 0.0 and evaluate.alignment(x, -x) == pytest.approx(4.0)
    collapsed = np.tile(x[:1], (200, 1))
    assert evaluate.uniformity(x) < evaluate.uniformity(collapsed) == pytest.approx(0.0)
    p, rank = evaluate.spectrum(x)
    assert p.sum() == pytest.approx(1.0) and 10 < rank <= 16
    low = x[:, :2] @ rng.normal(size=(2, 16))
    assert evaluate.spectrum(low)[1] < 3


def test_failure_kinds():
    corpus = {
        "a-0": {"text": "MERS-CoV incubation is 5 days", "metadata": {"doc_id": "a"}},
        "a-1": {"text": "methods of the study", "metadata": {"doc_id": "a"}},
        "b-0": {"text": "incubation of influenza viruses", "metadata": {"doc_id": "b"}},
        "c-0": {"text": "hospital staffing levels", "metadata": {"doc_id": "c"}},
    }
    relevant = {"a-0": 1}
    assert evaluate.failure_kind("incubation of MERS?", "a-1", relevant, corpus) == "right article, wrong chunk"
    assert evaluate.failure_kind("incubation of MERS-CoV?", "b-0", relevant, corpus) == "exact term missed"
    assert evaluate.failure_kind("how long is incubation?", "c-0", relevant, corpus) == "wrong article"


def test_ci_side_says_which_side_of_zero_a_ci_lies_on():
    assert [evaluate.ci_side(lo, hi) for lo, hi in ((0.01, 0.2), (-0.2, -0.01), (-0.1, 0.1), (0.0, 0.1))] == [
        1,
        -1,
        0,
        0,
    ]
