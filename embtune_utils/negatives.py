"""Negatives for (query, chunk) pairs: random, BM25 and dense hard negatives, guards, and a false-negative audit."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embtune_utils import config, evaluate

Pair = dict[str, Any]  # {"query": str, "chunk_id": str, ...}; a mined row adds "negatives": [chunk ids]
KINDS = ("random", "bm25", "dense", "dense (guarded)")

# The recipe that notebooks 04 and 05 train with; notebook 03 measures why (see its audit table) and writes the
# mine_hard_negatives call out in its cell tagged "recipe" (tests/test_negatives.py checks the two agree).
RECIPE = {"num_negatives": 3, "candidates": 30, "range_max": 200, "relative_margin": 0.05, "other_articles_only": True}


def recipe_mining_args() -> dict[str, Any]:
    """The arguments of mine_hard_negatives that make RECIPE's candidates (plumbing aside: see mining_plumbing)."""
    return {
        "range_min": 0,
        "range_max": RECIPE["range_max"],
        "relative_margin": RECIPE["relative_margin"],
        "num_negatives": RECIPE["candidates"],
        "sampling_strategy": "top",
        "output_format": "n-tuple",
        "output_scores": True,
        "use_faiss": True,
    }


def mining_plumbing(model: Any) -> dict[str, Any]:
    """mine_hard_negatives' plumbing: batch size, no statistics printout, and an embedding cache per model weights.

    (mine_hard_negatives names its cache files by the model's base-model name, so a fine-tuned model would reuse its
    base model's embeddings: a folder per weights fingerprint prevents that.)
    """
    folder = config.repo_root() / "artifacts" / "mining" / evaluate.model_fingerprint(model)
    return {"batch_size": config.settings().encode_batch_size, "verbose": False, "cache_folder": str(folder)}


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Mute mine_hard_negatives' output that no argument turns off: its positives-per-query line and progress bars."""
    import tqdm.std

    init = tqdm.std.tqdm.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = quiet_init  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm.std.tqdm.__init__ = init  # type: ignore[method-assign]


class NegativesError(ValueError):
    """Mining asked for something the data cannot give; the message names the fix."""


def positives_by_query(pairs: list[Pair]) -> dict[str, set[str]]:
    """Every chunk that is a positive for a query text (a query can have several): never to be used as its negative."""
    out: dict[str, set[str]] = {}
    for p in pairs:
        out.setdefault(p["query"], set()).add(p["chunk_id"])
    return out


def _check(pairs: list[Pair], chunk_ids: list[str], n: int) -> None:
    if n < 1:
        raise NegativesError(f"num_negatives must be at least 1, got {n}.")
    missing = {p["chunk_id"] for p in pairs} - set(chunk_ids)
    if missing:
        raise NegativesError(
            f"{len(missing)} positive chunks are not in the corpus to mine from (e.g. {sorted(missing)[0]}): "
            "mine from the corpus the pairs were made from."
        )


def random_negatives(pairs: list[Pair], chunk_ids: list[str], n: int = 3, seed: int = config.SEED) -> list[Pair]:
    """n chunks drawn at random from the corpus, never a positive of the same query."""
    _check(pairs, chunk_ids, n)
    rng = random.Random(seed)
    positives = positives_by_query(pairs)
    rows = []
    for p in pairs:
        negs: list[str] = []
        while len(negs) < n:
            cid = rng.choice(chunk_ids)
            if cid not in positives[p["query"]] and cid not in negs:
                negs.append(cid)
        rows.append({**p, "negatives": negs})
    return rows


def bm25_negatives(pairs: list[Pair], corpus: dict[str, dict[str, Any]], n: int = 3, range_min: int = 0) -> list[Pair]:
    """The BM25 top-ranked chunks (after skipping `range_min`) that are not positives of the query."""
    _check(pairs, list(corpus), n)
    positives = positives_by_query(pairs)
    queries = {str(i): q for i, q in enumerate(positives)}
    run = evaluate.bm25_search(
        evaluate.bm25_index(corpus), queries, k=range_min + n + max(map(len, positives.values()))
    )
    ranked = {queries[i]: [d for d, _ in hits if d not in positives[queries[i]]] for i, hits in run.items()}
    return [{**p, "negatives": ranked[p["query"]][range_min : range_min + n]} for p in pairs]


def dense_negatives(
    pairs: list[Pair],
    model: Any,
    corpus: dict[str, dict[str, Any]],
    n: int = 3,
    range_min: int = 0,
    range_max: int | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    sampling_strategy: str = "top",
    cache_folder: Path | None = None,
) -> list[Pair]:
    """Dense hard negatives by sentence-transformers' mine_hard_negatives (FAISS search), mapped back to chunk ids.

    Rows for which the guards leave fewer than n negatives are dropped (mine_hard_negatives does so); each row
    keeps "scores": the query's cosine similarity to its positive, then to each negative.
    """
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    _check(pairs, list(corpus), n)
    ids, texts = evaluate.doc_texts(corpus)
    if len(set(texts)) != len(ids):
        raise NegativesError("Two chunks have the same text: drop duplicate chunks before mining.")
    dataset = Dataset.from_dict(
        {"anchor": [p["query"] for p in pairs], "positive": [corpus[p["chunk_id"]]["text"] for p in pairs]}
    )
    plumbing = mining_plumbing(model)
    if cache_folder is not None:
        plumbing["cache_folder"] = str(cache_folder)
    with silenced():
        mined = mine_hard_negatives(
            dataset,
            model,
            corpus=texts,
            range_min=range_min,
            range_max=range_max,
            absolute_margin=absolute_margin,
            relative_margin=relative_margin,
            num_negatives=n,
            sampling_strategy=sampling_strategy,
            output_format="n-tuple",
            output_scores=True,
            use_faiss=True,
            **plumbing,
        )
    return mined_rows(mined, pairs, corpus)


def mined_rows(mined: Any, pairs: list[Pair], corpus: dict[str, dict[str, Any]]) -> list[Pair]:
    """mine_hard_negatives' n-tuple rows (texts) mapped back to the pairs and chunk ids; "scores" kept when present."""
    ids, texts = evaluate.doc_texts(corpus)
    id_of = dict(zip(texts, ids))
    pair_of = {(p["query"], p["chunk_id"]): p for p in pairs}
    columns = [c for c in mined.column_names if c.startswith("negative_")]
    rows = []
    for r in mined:
        row = {**pair_of[(r["anchor"], id_of[r["positive"]])], "negatives": [id_of[r[c]] for c in columns]}
        if "scores" in r:
            row["scores"] = r["scores"]
        rows.append(row)
    return rows


def other_articles_only(rows: list[Pair], corpus: dict[str, dict[str, Any]], n: int | None = None) -> list[Pair]:
    """Drop negatives from the positive's own article (its neighbours often answer the query too); keep up to n."""
    out = []
    for r in rows:
        doc = corpus[r["chunk_id"]]["metadata"]["doc_id"]
        keep = [c for c in r["negatives"] if corpus[c]["metadata"]["doc_id"] != doc][:n]
        if keep:
            out.append({**{k: v for k, v in r.items() if k != "scores"}, "negatives": keep})
    return out


def recipe_name(source: str) -> str:
    """The artifact name of RECIPE's rows for a training source (synthetic / experts / both)."""
    return f"{source}-recipe"


def recipe_negatives(pairs: list[Pair], model: Any, corpus: dict[str, dict[str, Any]]) -> list[Pair]:
    """Dense negatives mined with RECIPE: a relative margin below the positive, then other articles only.

    Rows left with fewer than RECIPE["num_negatives"] negatives are dropped.
    """
    n = RECIPE["num_negatives"]
    rows = dense_negatives(
        pairs,
        model,
        corpus,
        n=RECIPE["candidates"],
        range_max=RECIPE["range_max"],
        relative_margin=RECIPE["relative_margin"],
    )
    rows = other_articles_only(rows, corpus, n) if RECIPE["other_articles_only"] else rows
    return [r for r in rows if len(r["negatives"]) == n]


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def audit(rows: list[Pair], corpus: dict[str, dict[str, Any]], answers: dict[str, str] | None = None) -> dict[str, Any]:
    """Suspected false negatives: from the positive's own article, or (expert questions) holding the answer text."""
    answers = answers or {}
    counts = {"rows": len(rows), "negatives": 0, "same article": 0, "contains answer": 0, "rows with a suspect": 0}
    for r in rows:
        doc = corpus[r["chunk_id"]]["metadata"]["doc_id"]
        answer = _norm(answers.get(r["query"], ""))
        suspect = False
        for cid in r["negatives"]:
            counts["negatives"] += 1
            same = corpus[cid]["metadata"]["doc_id"] == doc
            has_answer = len(answer) >= 3 and answer in _norm(corpus[cid]["text"])
            counts["same article"] += same
            counts["contains answer"] += has_answer
            suspect = suspect or same or has_answer
        counts["rows with a suspect"] += suspect
    return counts


def scores(rows: list[Pair], query_emb: np.ndarray, doc_emb: np.ndarray, doc_ids: list[str]) -> dict[str, np.ndarray]:
    """Cosine similarity of each row's query to its positive and to each of its negatives (unit embeddings)."""
    row_of = {cid: i for i, cid in enumerate(doc_ids)}
    pos = np.array([query_emb[i] @ doc_emb[row_of[r["chunk_id"]]] for i, r in enumerate(rows)])
    neg = np.array([query_emb[i] @ doc_emb[row_of[c]] for i, r in enumerate(rows) for c in r["negatives"]])
    return {"positive": pos, "negative": neg}


def to_dataset(rows: list[Pair], corpus: dict[str, dict[str, Any]], n: int | None = None) -> Any:
    """A datasets.Dataset with columns anchor, positive, negative_1..negative_n (the n-tuple format of the losses)."""
    from datasets import Dataset

    n = min((len(r.get("negatives", [])) for r in rows), default=0) if n is None else n
    if any(len(r.get("negatives", [])) < n for r in rows):
        raise NegativesError(f"Some rows have fewer than {n} negatives: pass a smaller n or drop those rows.")
    columns: dict[str, list[str]] = {
        "anchor": [r["query"] for r in rows],
        "positive": [corpus[r["chunk_id"]]["text"] for r in rows],
    }
    for j in range(n):
        columns[f"negative_{j + 1}"] = [corpus[r["negatives"][j]]["text"] for r in rows]
    return Dataset.from_dict(columns)


def save_rows(rows: list[Pair], name: str) -> Path:
    """Write mined rows (chunk ids, not texts) to artifacts/<mode>/negatives/<name>.jsonl, atomically."""
    text = "".join(json.dumps({k: v for k, v in r.items() if k != "scores"}) + "\n" for r in rows)
    return config.write_text_atomic(config.artifacts_dir() / "negatives" / f"{name}.jsonl", text)


def load_rows(name: str) -> list[Pair] | None:
    """Mined rows saved by save_rows, or None when this mode has not mined them yet."""
    path = config.artifacts_dir() / "negatives" / f"{name}.jsonl"
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
