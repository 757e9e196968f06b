"""Checks for the exercise notebooks (notebooks/exercises/): each one compares a learner's function with the course's
own on seeded random input or real course text. An exercise still raising NotImplementedError is reported as not
solved yet; a wrong answer fails with what differs."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np

# Light modules only: beyond and rerank load torch, so the checks that need them import them.
from embtune_utils import config, deploy, evaluate, synth


def check(name: str, test: Callable[[], Any]) -> bool:
    """Run one exercise's check: True when it passes, False when the exercise is not solved yet."""
    try:
        test()
    except NotImplementedError:
        print(f"·  {name}: not solved yet (a solution is in notebooks/solutions/)")
        return False
    print(f"✓  {name}: correct")
    return True


def _random_runs(n: int = 200, seed: int = config.SEED) -> list[tuple[list[str], dict[str, int], int]]:
    """Random rankings of 30 documents, 0-3 relevant ones each, and a cut-off k."""
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(30)]
    cases = []
    for _ in range(n):
        ranked = rng.sample(docs, 20)
        relevant = {d: 1 for d in rng.sample(docs, rng.randint(0, 3))}
        cases.append((ranked, relevant, rng.choice((1, 3, 10, 20))))
    return cases


def _same(name: str, theirs: Callable[..., Any], ours: Callable[..., Any], cases: list[tuple]) -> None:
    for args in cases:
        got, want = theirs(*args), ours(*args)
        assert np.allclose(got, want), f"{name}{args!r}: got {got!r}, expected {want!r}"


# ---------------------------------------------------------------- 01


def check_recall_at_k(fn: Callable[[list[str], dict[str, int], int], float]) -> bool:
    """01 · recall@k: the share of the relevant documents found in the top k (0 when none is relevant)."""
    return check("recall@k", lambda: _same("recall_at_k", fn, evaluate.recall_at_k, _random_runs()))


def check_mrr_at_k(fn: Callable[[list[str], dict[str, int], int], float]) -> bool:
    """01 · MRR@k: 1 / rank of the first relevant document in the top k, else 0."""
    return check("MRR@k", lambda: _same("mrr_at_k", fn, evaluate.mrr_at_k, _random_runs()))


def check_overlap_prediction(prediction: str, counts: dict[int, int]) -> bool:
    """01 · predict how the number of chunks moves when the overlap grows (more / fewer / same), then measure it."""

    def test() -> None:
        if prediction not in ("more", "fewer", "same"):
            raise NotImplementedError
        low, high = sorted(counts)
        actual = "more" if counts[high] > counts[low] else "fewer" if counts[high] < counts[low] else "same"
        assert prediction == actual, f"you predicted {prediction!r}; measured {counts}: {actual!r}. Why?"

    return check("chunk overlap prediction", test)


# ---------------------------------------------------------------- 02


def check_copy_ratio(fn: Callable[[str, str], float]) -> bool:
    """02 · the share of a query's word 4-grams that occur verbatim in its passage."""
    passage = "The incubation period of MERS-CoV is estimated at 5.2 days, with a range of 2 to 13 days."
    cases = [
        ("What is the incubation period of MERS-CoV?", passage),
        ("The incubation period of MERS-CoV is estimated at 5.2 days", passage),
        ("How long before symptoms show?", passage),
        ("Too short", passage),
        ("", passage),
    ]
    return check("copy ratio", lambda: _same("copy_ratio", fn, synth.copy_ratio, cases))


def check_length_filter(fn: Callable[[list[dict[str, Any]], int, int], list[dict[str, Any]]]) -> bool:
    """02 · keep the pairs whose query has min_words to max_words words."""
    queries = ["", "Why?", "What is MERS?", "What is the incubation period of MERS-CoV?", " ".join(["word"] * 45)]
    pairs = [{"query": q, "chunk_id": f"c{i}"} for i, q in enumerate(queries)]

    def test() -> None:
        for lo, hi in ((4, 40), (1, 3), (2, 50)):
            got = [p["chunk_id"] for p in fn(pairs, lo, hi)]
            want = [p["chunk_id"] for p in synth.filter_length(pairs, lo, hi)[0]]
            assert got == want, f"min_words={lo}, max_words={hi}: kept {got}, expected {want}"

    return check("length filter", test)


# ---------------------------------------------------------------- 03


def check_hardest_negative(fn: Callable[[np.ndarray, np.ndarray, set[int]], int]) -> bool:
    """03 · the index of the document most similar to the query that is not one of its positives."""
    rng = np.random.default_rng(config.SEED)

    def test() -> None:
        for _ in range(50):
            docs = rng.normal(size=(40, 8))
            docs /= np.linalg.norm(docs, axis=1, keepdims=True)
            query = docs[rng.integers(40)] + 0.3 * rng.normal(size=8)
            scores = docs @ query
            positives = {int(i) for i in np.argsort(-scores)[: rng.integers(1, 3)]}
            want = next(int(i) for i in np.argsort(-scores) if int(i) not in positives)
            got = fn(query, docs, positives)
            assert got == want, f"got document {got}, expected {want} (positives {sorted(positives)})"

    return check("hardest negative", test)


def check_false_negative_share(fn: Callable[[list[dict[str, Any]], dict[str, str]], float]) -> bool:
    """03 · the share of mined negatives that contain the question's answer text (likely false negatives)."""
    corpus = {"a": "MERS-CoV binds DPP4.", "b": "DPP4 is the receptor.", "c": "Bats carry it.", "d": "Camels too."}
    rows = [
        {"query": "q1", "chunk_id": "a", "answer": "DPP4", "negatives": ["b", "c"]},
        {"query": "q2", "chunk_id": "c", "answer": "Bats", "negatives": ["d", "a"]},
    ]

    def test() -> None:
        got = fn(rows, corpus)
        assert np.isclose(got, 0.25), f"got {got}: 1 of the 4 negatives ('b' for q1) contains its answer"

    return check("false-negative share", test)


# ---------------------------------------------------------------- 04


def check_info_nce(fn: Callable[[Any, Any, float], Any]) -> bool:
    """04 · InfoNCE with in-batch negatives: cross-entropy of scale * cos(q_i, d_j), the target j = i."""
    import torch

    from embtune_utils import losses

    def test() -> None:
        gen = torch.Generator().manual_seed(config.SEED)
        for n_docs, scale in ((4, 20.0), (8, 5.0), (6, 50.0)):
            q, d = torch.randn(4, 16, generator=gen), torch.randn(n_docs, 16, generator=gen)
            got, want = float(fn(q, d, scale)), float(losses.info_nce(q, d, scale))
            assert np.isclose(got, want, rtol=1e-5), f"{n_docs} documents, scale {scale}: got {got}, expected {want}"

    return check("InfoNCE", test)


def check_in_batch_accuracy(fn: Callable[[np.ndarray, np.ndarray], float]) -> bool:
    """04 · the share of queries whose own document (same row) scores highest among the batch's documents."""
    rng = np.random.default_rng(config.SEED)

    def test() -> None:
        for noise in (0.1, 1.0, 3.0):
            docs = rng.normal(size=(16, 8))
            queries = docs + noise * rng.normal(size=(16, 8))
            want = float(np.mean(np.argmax(queries @ docs.T, axis=1) == np.arange(16)))
            got = fn(queries, docs)
            assert np.isclose(got, want), f"noise {noise}: got {got}, expected {want}"

    return check("in-batch accuracy", test)


# ---------------------------------------------------------------- 05


def check_trainable_share(fn: Callable[[Any], float], model: Any) -> bool:
    """05 · the share of a model's parameters that will train (requires_grad), after freezing some layers."""
    from embtune_utils import train

    def test() -> None:
        got = fn(model)
        trainable, total = train.trainable_parameters(model)
        assert np.isclose(got, trainable / total), f"got {got}, expected {trainable / total:.4f}"

    return check("trainable share", test)


def check_steps(fn: Callable[[int, int, int], int]) -> bool:
    """05 · optimizer steps of a run: ceil(rows / batch) per epoch (the last batch may be smaller), times epochs."""
    cases = [(3007, 32, 1), (96, 16, 1), (100, 32, 3), (31, 32, 2)]
    want = [-(-rows // batch) * epochs for rows, batch, epochs in cases]

    def test() -> None:
        for args, expected in zip(cases, want):
            got = fn(*args)
            assert got == expected, f"rows, batch, epochs = {args}: got {got} steps, expected {expected}"

    return check("training steps", test)


# ---------------------------------------------------------------- 06


def check_rrf(
    fn: Callable[[list[dict[str, list[tuple[str, float]]]], int], dict[str, list[tuple[str, float]]]],
) -> bool:
    """06 · reciprocal rank fusion: each document scores the sum of 1 / (k + rank) (rank from 1) over the runs."""
    rng = random.Random(config.SEED)
    docs = [f"d{i}" for i in range(12)]
    runs = [{q: [(d, 1.0 - r / 10) for r, d in enumerate(rng.sample(docs, 8))] for q in ("q1", "q2")} for _ in range(3)]

    def test() -> None:
        for k in (1, 60):
            got, want = fn(runs, k), evaluate.rrf(runs, k)
            for q in want:
                got_scores, want_scores = dict(got[q]), dict(want[q])
                assert got_scores.keys() == want_scores.keys(), f"k={k}, {q}: other documents than expected"
                for d, s in want_scores.items():
                    assert np.isclose(got_scores[d], s), f"k={k}, {q}, {d}: got {got_scores[d]}, expected {s}"

    return check("reciprocal rank fusion", test)


def check_bootstrap_ci(fn: Callable[[np.ndarray, int, int], tuple[float, float, float]]) -> bool:
    """06 · mean and 95% percentile bootstrap interval of per-question scores (resample questions)."""
    rng = np.random.default_rng(config.SEED)

    def test() -> None:
        small, large = rng.random(30), rng.random(3000)
        for v in (small, large):
            mean, lo, hi = fn(v, 2000, 0)
            _, want_lo, want_hi = evaluate.bootstrap_ci(v, 2000)
            assert np.isclose(mean, v.mean()) and lo < mean < hi, f"got ({mean}, {lo}, {hi})"
            assert abs(lo - want_lo) < 0.02 and abs(hi - want_hi) < 0.02, (
                f"interval ({lo}, {hi}) vs ({want_lo}, {want_hi})"
            )
        assert fn(large, 2000, 0)[2] - fn(large, 2000, 0)[1] < fn(small, 2000, 0)[2] - fn(small, 2000, 0)[1]

    return check("bootstrap interval", test)


# ---------------------------------------------------------------- 06b


def _first_stage_runs(seed: int = config.SEED) -> list[dict[str, list[tuple[str, float]]]]:
    """Two random first-stage runs over 15 documents for 5 questions, 10 deep each, best first."""
    rng = random.Random(seed)
    docs = [f"d{i:02d}" for i in range(15)]
    return [{f"q{n}": [(d, 1.0 - r / 10) for r, d in enumerate(rng.sample(docs, 10))] for n in range(5)}
            for _ in range(2)]  # fmt: skip


def check_rerank_top_k(fn: Callable[[list[tuple[str, float]], dict[str, float], int], list[str]]) -> bool:
    """06b · the top k of one question's list ordered by the reranker's scores (ties: first-stage order), the rest
    unchanged."""
    from embtune_utils import rerank

    rng = random.Random(config.SEED)
    run = _first_stage_runs()[0]
    scores = {q: {d: rng.choice((0.1, 0.5, 0.9, rng.random())) for d, _ in ranked} for q, ranked in run.items()}

    def test() -> None:
        for k in (1, 3, 10):
            want = rerank.reorder(run, scores, k)
            for q, ranked in run.items():
                got = list(fn(ranked, scores[q], k))
                expected = [d for d, _ in want[q]]
                assert got == expected, f"k={k}, {q}: got {got}, expected {expected}"

    return check("rerank the top k", test)


def check_forward_passes(fn: Callable[[list[dict[str, list[tuple[str, float]]]], int], int]) -> bool:
    """06b · the (question, chunk) pairs a reranker scores for several first stages at one depth: each pair once."""
    from embtune_utils import rerank

    runs = _first_stage_runs()

    class Counting:
        pairs = 0

        def predict(self, pairs: list, **_: Any) -> list[float]:
            Counting.pairs += len(pairs)
            return [0.0] * len(pairs)

    corpus = {d: {"text": d} for run in runs for ranked in run.values() for d, _ in ranked}

    def test() -> None:
        for depth in (1, 5, 10):
            Counting.pairs = 0
            rerank.candidate_scores(Counting(), runs, {q: q for q in runs[0]}, corpus, depth)
            got = fn(runs, depth)
            assert got == Counting.pairs, f"depth {depth}: got {got}, expected {Counting.pairs}"

    return check("forward passes per depth", test)


# ---------------------------------------------------------------- 07


def check_to_binary(fn: Callable[[np.ndarray], np.ndarray]) -> bool:
    """07 · binary quantization: one bit per dimension (1 if > 0), packed 8 to a uint8."""
    emb = np.random.default_rng(config.SEED).normal(size=(20, 64)).astype(np.float32)

    def test() -> None:
        got = fn(emb)
        want = deploy.to_binary(emb)
        assert got.dtype == np.uint8 and got.shape == want.shape, (
            f"got {got.dtype} {got.shape}, expected uint8 {want.shape}"
        )
        assert np.array_equal(got, want), "the bits differ: bit order is most significant first (np.packbits)"

    return check("binary quantization", test)


def check_hamming(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> bool:
    """07 · Hamming distances between one packed binary query and every packed document."""
    rng = np.random.default_rng(config.SEED)
    docs = deploy.to_binary(rng.normal(size=(50, 64)).astype(np.float32))
    query = deploy.to_binary(rng.normal(size=(1, 64)).astype(np.float32))[0]

    def test() -> None:
        want = np.unpackbits(np.bitwise_xor(docs, query), axis=1).sum(axis=1)
        got = np.asarray(fn(query, docs))
        assert np.array_equal(got, want), f"first distances {got[:5]}, expected {want[:5]}"

    return check("Hamming distance", test)


# ---------------------------------------------------------------- 08


def check_promote(fn: Callable[[dict[str, float], dict[str, float], dict[str, str], float], str]) -> bool:
    """08 · the promote-or-rollback rule: 'promote' only with an overall gain and no slice losing > tolerance."""
    from embtune_utils import beyond

    rng = np.random.default_rng(config.SEED)
    qids = [f"q{i}" for i in range(30)]
    slices = {q: "old" if i < 15 else "new" for i, q in enumerate(qids)}

    def test() -> None:
        for _ in range(40):
            current = {q: float(rng.random()) for q in qids}
            candidate = {
                q: min(1.0, max(0.0, v + rng.normal(0, 0.1) + rng.choice([0, 0.05]))) for q, v in current.items()
            }
            for tolerance in (0.0, 0.01, 0.05):
                want = beyond.promote(current, candidate, slices, tolerance)["decision"]
                got = fn(current, candidate, slices, tolerance)
                assert got == want, f"tolerance {tolerance}: got {got!r}, expected {want!r}"

    return check("promote or rollback", test)


def check_keyboard_typo(fn: Callable[[str, random.Random], str]) -> bool:
    """08 · a typo that keeps the first and last letters, changes the word, and leaves short words alone."""

    def test() -> None:
        rng = random.Random(config.SEED)
        assert fn("of", rng) == "of", "words under 4 letters stay as they are"
        for word in ("transmission", "receptor", "vaccine", "fever"):
            for _ in range(20):
                out = fn(word, rng)
                assert out != word and out[0] == word[0] and out[-1] == word[-1], f"{word!r} -> {out!r}"
                assert abs(len(out) - len(word)) <= 1, f"{word!r} -> {out!r}: one typo changes the length by <= 1"

    return check("keyboard typo", test)
