"""`embtune run`: the course's steps as resumable stages on your own corpus, with the notebooks' own functions.

load → queries → negatives → train → evaluate → deploy → report. Each stage writes its outputs under --out
atomically, then a record `stages/<name>.json` whose key hashes the stage's settings and the previous stage's key.
A re-run skips every stage whose key is unchanged: a changed setting re-runs the stage it affects and those after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embtune_utils import config, data, deploy, evaluate, negatives, synth, train
from embtune_utils import rerank as reranking

STAGES = ("load", "queries", "negatives", "train", "rerank", "evaluate", "deploy", "report")
TRAIN_QUERIES = ("synthetic", "real", "both")
SCHEMA_METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")  # metrics.json, per retriever
RETRIEVERS = ("bm25", "base", "finetuned", "hybrid", "hybrid weighted")  # simplest first: ties go to the earlier
RERANKED = {"bm25 + rerank": "bm25", "hybrid weighted + rerank": "hybrid weighted"}  # --rerank: name -> its first stage
SERVES = {"bm25": "bm25", "base": "dense", "finetuned": "dense"} | {h: h for h in ("hybrid", "hybrid weighted")}
SERVES |= {name: SERVES[first] for name, first in RERANKED.items()}  # what the first stage of each serves
DEV_SHARE = 0.2  # of the training queries held out for dev when the corpus has no dev qrels
MAX_DEV_QUERIES = 200
DEV_CORPUS_MAX = 500  # dev questions are searched among their passages plus a sample (early stopping only)
PAIRS_SEEN = {"fast": 96, "default": 1536, "full": None}  # training budget per mode (None: the mode's epochs over all)
MAX_EPOCHS = 8  # a small corpus gets several passes, at most this many
EVALUATIONS = 6  # dev evaluations per training run: early stopping needs a few, each costs a dev encoding
SHIPPED_CACHE = "synthetic/queries_smollm2.jsonl"  # under data/: the course's local-generator run


class RunError(ValueError):
    """A user error in `embtune run`'s input or flags; the message names the problem and the fix."""


@dataclass(frozen=True)
class RunConfig:
    """Everything `embtune run` was asked to do."""

    corpus: str
    out: str
    base_model: str = config.BASE_MODEL
    mode: str = "default"
    train_queries: str = "both"
    generator: str = "cache"
    base_url: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = config.SEED
    hard_negatives: int = train.FINAL["hard_negatives"]
    rerank: bool | None = None  # train a reranker and add RERANKED to the choice; None: on a GPU only

    def reranks(self) -> bool:
        """Whether this run trains a reranker: --rerank / --no-rerank, else only on a GPU (hours on a CPU corpus)."""
        return config.detect_device() == "cuda" if self.rerank is None else self.rerank

    def check(self) -> None:
        """Reject flag values that cannot work, before any stage runs."""
        if self.train_queries not in TRAIN_QUERIES:
            raise RunError(f"--train-queries {self.train_queries!r}: use one of {', '.join(TRAIN_QUERIES)}.")
        if self.generator not in synth.GENERATORS:
            raise RunError(f"--generator {self.generator!r}: use one of {', '.join(synth.GENERATORS)}.")
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value is not None and value < (2 if flag == "--batch-size" else 1):
                raise RunError(
                    f"{flag} {value}: use a positive number (batch size at least 2, for in-batch negatives)."
                )
        if not 0 <= self.hard_negatives <= negatives.RECIPE["num_negatives"]:
            raise RunError(f"--hard-negatives {self.hard_negatives}: use 0..{negatives.RECIPE['num_negatives']}.")
        config.get_mode(self.mode)

    def settings_of(self, stage: str) -> dict[str, Any]:
        """The settings that change a stage's output (its key also includes the previous stage's key)."""
        by_stage = {
            "load": {"corpus": corpus_fingerprint(Path(self.corpus)), "base_model": self.base_model, "seed": self.seed},
            "queries": {"train_queries": self.train_queries, "generator": self.generator, "mode": self.mode},
            "negatives": {"hard_negatives": self.hard_negatives},
            "train": {
                "epochs": self.epochs,
                "batch_size": self.batch_size,
                "recipe": train.FINAL,
                "mode": self.mode,
                "budget": (PAIRS_SEEN, MAX_EPOCHS, EVALUATIONS),
            },  # fmt: skip
            "rerank": {"rerank": self.reranks(), "mode": self.mode, "recipe": self.reranks() and reranking.recipe()},
        }
        return by_stage.get(stage, {})


def corpus_fingerprint(path: Path) -> str:
    """A hash of the corpus files' names, sizes and modification times (or of the dataset name)."""
    if not path.exists():
        return str(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    parts = [(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime) for p in files]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- stage 1: load (and chunk)


def load_stage(cfg: RunConfig, out: Path, tokenizer: Any) -> tuple[dict[str, Any], str]:
    """Read the corpus (BEIR folder, folder of .txt/.md, or HF dataset name), chunk long documents, write data/."""
    path = Path(cfg.corpus).expanduser()
    if (path / "corpus.jsonl").is_file():
        beir = data.load_beir(path)
        for doc_id, doc in beir.corpus.items():  # each document is its own "article" for the negatives' guard
            doc["metadata"] = {"doc_id": doc_id, **(doc.get("metadata") or {})}
        if not beir.qrels.get("test"):
            raise RunError(
                f"{path / 'qrels' / 'test.tsv'} is missing or empty: a BEIR folder needs test qrels to score the "
                "model. Add them, or pass a folder of .txt files (its test queries are generated)."
            )
        max_len = getattr(tokenizer, "model_max_length", 512)
        long_docs = sum(
            len(tokenizer(d["text"], add_special_tokens=False)["input_ids"]) > max_len for d in beir.corpus.values()
        )
        kind = "beir"
    else:
        if path.is_dir():
            docs = data.load_text_folder(path)
            kind = "text"
        elif not path.exists() and "/" in cfg.corpus and not cfg.corpus.startswith((".", "/", "~")):
            docs = data.load_hf_corpus(cfg.corpus)
            kind = "huggingface"
        else:
            raise RunError(f"--corpus {cfg.corpus}: no such folder. Pass a BEIR folder, a folder of .txt/.md files "
                           "or a Hugging Face dataset name.")  # fmt: skip
        if len(docs) < 3:
            raise RunError(f"{cfg.corpus} has {len(docs)} document(s): at least 3 are needed, so that training, dev "
                           "and test questions come from different documents.")  # fmt: skip
        split_of = data.split_articles(list(docs), seed=cfg.seed)
        corpus = {}
        for doc_id, doc in docs.items():
            spans = data.chunk_spans(doc["text"], tokenizer, config.CHUNK_TOKENS, config.CHUNK_OVERLAP)
            for n, (start, end) in enumerate(spans):
                meta = {"doc_id": doc_id, "split": split_of[doc_id], "char_start": start, "char_end": end}
                corpus[f"{doc_id}#{n:03d}"] = {"title": doc["title"], "text": doc["text"][start:end], "metadata": meta}
        beir = data.Beir(corpus, {}, {})
        long_docs = sum(len(data.chunk_spans(d["text"], tokenizer, config.CHUNK_TOKENS, 0)) > 1 for d in docs.values())
    data.write_beir(beir, out / "data")
    counts = {split: len(q) for split, q in beir.qrels.items()}
    result = {"kind": kind, "documents": len({c["metadata"]["doc_id"] for c in beir.corpus.values()})}
    result |= {"chunks": len(beir.corpus), "labelled_queries": counts, "long_documents": long_docs}
    line = f"{kind}: {result['documents']} documents → {len(beir.corpus)} passages; labelled queries {counts or 'none'}"
    return result, line


# ---------------------------------------------------------------- stage 2: queries (generate, filter, splits)


def _eligible_chunks(beir: data.Beir, kind: str, seed: int) -> dict[str, str]:
    """Passages that get synthetic queries: all (or, in fast mode, a seeded sample spread over the splits)."""
    cap = config.settings().max_generate_chunks
    ids = list(beir.corpus)
    if cap is not None and len(ids) > cap:
        rng = random.Random(seed)
        if kind == "beir":
            ids = rng.sample(ids, cap)
        else:  # every split keeps a share, so that dev and test get questions
            ids = []
            for split, share in config.SPLIT_FRACTIONS.items():
                pool = [c for c, d in beir.corpus.items() if d["metadata"]["split"] == split]
                ids += rng.sample(pool, min(len(pool), max(2, round(cap * share))))
    return {cid: beir.corpus[cid]["text"] for cid in ids}


def _generated(cfg: RunConfig, out: Path, chunks: dict[str, str]) -> tuple[dict[str, list[str]], str]:
    """Queries per passage from the chosen generator (resumable cache under --out), and the generator's name."""
    generator, backend = synth.make_generator(cfg.generator, out / "batch", cfg.base_url)
    cache = out / "queries.jsonl"
    if backend is None:  # replay: --out's cache, then the course's shipped cache (it covers the COVID-QA chunks)
        queries = synth.cached_queries(config.data_dir() / SHIPPED_CACHE, generator, chunks) if _has_repo() else {}
        queries |= synth.cached_queries(cache, generator, chunks)
        if not queries:
            raise RunError(
                "--generator cache found no cached queries for these passages (the shipped cache covers the course's "
                "COVID-QA training chunks only): use --generator local (offline; slow on a CPU), openai or "
                "openai-compatible --base-url URL."
            )
        return queries, f"{generator.backend} ({generator.model}), replayed"
    from tqdm.auto import tqdm

    bar = tqdm(total=len(chunks), desc="generating queries", unit="passage")
    done = len(synth.cached_queries(cache, generator, chunks))
    bar.update(done)

    def progress(n: int, total: int) -> None:
        bar.update(1)

    queries = synth.generate(chunks, backend, generator, cache, progress)
    bar.close()
    return queries, f"{generator.backend} ({generator.model})"


def _has_repo() -> bool:
    try:
        config.repo_root()
        return True
    except config.ConfigError:
        return False


def _hold_out(pairs: list[dict[str, Any]], share: float, seed: int, prefix: str) -> tuple[list, dict, dict]:
    """Move a seeded share of the (query, chunk) pairs into held-out queries and qrels; returns the rest too."""
    rng = random.Random(seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n = min(MAX_DEV_QUERIES, max(1, round(share * len(pairs))))
    held = set(order[:n])
    queries = {f"{prefix}{i}": pairs[i]["query"] for i in sorted(held)}
    qrels = {f"{prefix}{i}": {pairs[i]["chunk_id"]: 1} for i in sorted(held)}
    return [p for i, p in enumerate(pairs) if i not in held], queries, qrels


def queries_stage(cfg: RunConfig, out: Path, model: Any, kind: str) -> tuple[dict[str, Any], str]:
    """Training pairs (synthetic after the course's filters, real, or both), and dev/test questions; writes dataset/."""
    beir = data.load_beir(out / "data")
    if cfg.train_queries == "real" and not beir.qrels.get("train"):
        where = "no qrels/train.tsv" if kind == "beir" else "only BEIR folders with qrels have them"
        raise RunError(f"--train-queries real needs labelled training queries and {cfg.corpus} has none ({where}): "
                       "add them, or use --train-queries synthetic.")  # fmt: skip
    result: dict[str, Any] = {}
    synthetic: list[dict[str, Any]] = []
    if cfg.train_queries in ("synthetic", "both") or kind != "beir":
        chunks = _eligible_chunks(beir, kind, cfg.seed)
        queries, result["generator"] = _generated(cfg, out, chunks)
        pairs = synth.to_pairs(queries)
        if kind != "beir":  # held-out documents' first generated question becomes a dev or test query
            for split in ("dev", "test"):
                held = [
                    p for p in synth.filter_length(pairs)[0] if beir.corpus[p["chunk_id"]]["metadata"]["split"] == split
                ]
                first = {}
                for p in held:
                    first.setdefault(p["chunk_id"], p["query"])
                beir.qrels[split] = {f"gen-{split}-{n}": {cid: 1} for n, cid in enumerate(first)}
                beir.queries |= {f"gen-{split}-{n}": q for n, q in enumerate(first.values())}
            pairs = [p for p in pairs if beir.corpus[p["chunk_id"]]["metadata"]["split"] == "train"]
        heldout = [beir.queries[q] for split in ("dev", "test") for q in beir.qrels.get(split, {})]
        texts = {cid: beir.corpus[cid]["text"] for cid in {p["chunk_id"] for p in pairs}}
        synthetic, _, result["filters"] = synth.apply_filters(pairs, texts, model, heldout, beir.corpus)
    real = []
    if cfg.train_queries in ("real", "both"):
        real = [{"query": beir.queries[q], "chunk_id": c} for q, rels in beir.qrels.get("train", {}).items()
                for c, score in rels.items() if score > 0]  # fmt: skip
    if not beir.qrels.get("dev"):  # hold dev out of the training queries, real ones first
        from_real = len(real) >= 10 or not synthetic
        if not (real if from_real else synthetic):
            raise RunError("no queries to hold out for dev: add qrels/dev.tsv or use --train-queries synthetic.")
        rest, dev_q, dev_qrels = _hold_out(real if from_real else synthetic, DEV_SHARE, cfg.seed, "dev-")
        real, synthetic = (rest, synthetic) if from_real else (real, rest)
        beir.queries |= dev_q
        beir.qrels["dev"] = dev_qrels
        result["dev_from"] = "real training queries" if from_real else "synthetic queries"
    if not beir.qrels.get("test"):
        raise RunError(f"no test queries: {cfg.corpus} gave no generated questions for its held-out documents; "
                       "add documents or use a BEIR folder with qrels/test.tsv.")  # fmt: skip
    if not real + synthetic:
        raise RunError("no training pairs are left: check the generator's output (queries.jsonl) or add train qrels.")
    test_cap = config.settings().max_test_queries
    if test_cap is not None and len(beir.qrels["test"]) > test_cap:
        keep = set(random.Random(cfg.seed).sample(sorted(beir.qrels["test"]), test_cap))
        beir.qrels["test"] = {q: r for q, r in beir.qrels["test"].items() if q in keep}
    data.write_beir(beir, out / "dataset")
    synth.save_pairs(real + synthetic, out / "train_pairs.jsonl")
    result |= {"pairs": {"real": len(real), "synthetic": len(synthetic)}}
    result |= {"dev_queries": len(beir.qrels["dev"]), "test_queries": len(beir.qrels["test"])}
    result["test_kind"] = "labelled (qrels/test.tsv)" if kind == "beir" else "generated, from held-out documents"
    line = f"{len(real)} real + {len(synthetic)} synthetic training pairs; dev {result['dev_queries']}, "
    return result, line + f"test {result['test_queries']} ({result['test_kind']})"


def _read_pairs(path: Path) -> list[dict[str, Any]]:
    return data.read_jsonl(path, ("query", "chunk_id"))


# ---------------------------------------------------------------- stages 3-4: negatives, train


def negatives_stage(cfg: RunConfig, out: Path, model: Any) -> tuple[dict[str, Any], str]:
    """Hard negatives with notebook 03's recipe when --hard-negatives > 0; else in-batch negatives only."""
    pairs = _read_pairs(out / "train_pairs.jsonl")
    if cfg.hard_negatives == 0:
        synth.save_pairs(pairs, out / "train_rows.jsonl")
        return {
            "rows": len(pairs),
            "hard_negatives": 0,
        }, f"{len(pairs)} rows, in-batch negatives only (the course's recipe)"
    beir = data.load_beir(out / "dataset")
    rows = negatives.recipe_negatives(pairs, model, beir.corpus)
    synth.save_pairs(rows, out / "train_rows.jsonl")
    return {"rows": len(rows), "hard_negatives": cfg.hard_negatives}, f"{len(rows)} rows with mined negatives"


def dev_sample(beir: data.Beir, seed: int, size: int = DEV_CORPUS_MAX) -> dict[str, dict[str, Any]]:
    """The dev questions' relevant passages plus a seeded sample of the others, `size` in all (at least the former)."""
    relevant = {c for rels in beir.qrels["dev"].values() for c in rels}
    others = sorted(set(beir.corpus) - relevant)
    chosen = relevant | set(random.Random(seed).sample(others, max(0, min(len(others), size - len(relevant)))))
    return {cid: doc for cid, doc in beir.corpus.items() if cid in chosen}


def training_budget(n_pairs: int, mode: str, epochs: int | None = None, batch_size: int | None = None) -> dict:
    """Pairs, epochs, batch size, learning rate and evaluation interval for `n_pairs` training pairs in a mode.

    The mode sets how many pairs training may see (PAIRS_SEEN): a larger set is sampled down to it and seen once, a
    smaller one is seen several times (at most MAX_EPOCHS). The batch keeps at least 8 steps per pass (in-batch
    negatives need a batch, the optimizer needs steps); the learning rate follows the batch's square root from
    notebook 05's (5e-5 at the mode's batch); the dev set is scored EVALUATIONS times, early stopping after
    train.PATIENCE evaluations without a gain. --epochs and --batch-size override the choice.
    """
    import math

    settings = config.settings(mode)
    seen = PAIRS_SEEN[mode] or n_pairs * settings.epochs
    batch = batch_size or max(2, min(settings.train_batch_size, max(4, n_pairs // 8), n_pairs))
    pairs = min(n_pairs, seen)
    passes = epochs or max(1, min(MAX_EPOCHS, round(seen / max(pairs, 1))))
    steps = math.ceil(pairs / batch) * passes
    rate = train.FINAL["learning_rate"] * (batch / settings.train_batch_size) ** 0.5
    return {"pairs": pairs, "epochs": passes, "batch_size": batch, "learning_rate": float(f"{rate:.3g}"),
            "steps": steps, "eval_steps": max(1, steps // EVALUATIONS)}  # fmt: skip


def train_stage(cfg: RunConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Notebook 05's training run (train.train_model) on these rows; resumes from out/checkpoints."""
    beir = data.load_beir(out / "dataset")
    rows = _read_pairs(out / "train_rows.jsonl")
    budget = training_budget(len(rows), cfg.mode, cfg.epochs, cfg.batch_size)
    print(f"[train] budget for {len(rows)} pairs in {cfg.mode} mode: {budget}", flush=True)
    model, result = train.train_model(
        beir,
        out / "checkpoints",
        loss_name=train.FINAL["loss"],
        hard_negatives=cfg.hard_negatives,
        learning_rate=budget["learning_rate"],
        epochs=budget["epochs"],
        batch_size=budget["batch_size"],
        base_model=cfg.base_model,
        rows=train.sample_rows(rows, budget["pairs"], cfg.seed),
        corpus=beir.corpus,
        dev_corpus=dev_sample(beir, cfg.seed),
        seed=cfg.seed,
        progress=True,
        max_pairs=None,
        eval_steps=budget["eval_steps"],
    )
    record = train.model_record(result) | {"data": f"{cfg.corpus}: {cfg.train_queries} training queries"}
    train.save_model(model, out / "model", record)
    keep = (
        "steps",
        "max_steps",
        "pairs",
        "best",
        "seconds",
        "peak_mb",
        "resumed_from",
        "dev",
        "losses",
        "epochs",
        "batch_size",
        "learning_rate",
        "best_checkpoint",
    )
    summary = {k: result[k] for k in keep if k in result} | {"budget": budget}
    resumed = f", resumed from {Path(result['resumed_from']).name}" if result.get("resumed_from") else ""
    return (
        summary,
        f"{result['steps']} steps on {result['pairs']} pairs, best dev NDCG@10 {result['best']:.3f}{resumed}",
    )


def rerank_stage(cfg: RunConfig, out: Path, base: Any) -> tuple[dict[str, Any], str]:
    """With --rerank (default on a GPU only): notebook 06b's reranker, trained on the run's training questions with
    negatives mined by the base model, saved as out/reranker. A killed run trains it again from the start."""
    if not cfg.reranks():
        why = "--no-rerank" if cfg.rerank is False else "off on a CPU; pass --rerank to train one"
        return {"enabled": False}, f"no reranker ({why})"
    beir = data.load_beir(out / "dataset")
    pairs = train.sample_rows(_read_pairs(out / "train_pairs.jsonl"), config.settings().rerank_questions, cfg.seed)
    questions = reranking.questions_dataset(pairs, beir.corpus)
    model, result = reranking.train_reranker(questions, base, beir.corpus, out / "reranker-run", seed=cfg.seed)
    tmp = out / "reranker.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    deploy.swap_in(tmp, out / "reranker")  # a kill mid-save leaves the previous reranker whole
    result |= {"enabled": True, "questions": len(pairs)}
    return result, f"reranker trained on {len(pairs)} questions ({result['loss']}) in {result['seconds']:.0f} s"


# ---------------------------------------------------------------- stages 6-8: evaluate, deploy, report


def choose(dev_ndcg: dict[str, float]) -> str:
    """The retriever with the best dev NDCG@10; equal to three decimals, the simpler one (RETRIEVERS' order, then
    the reranked ones)."""
    best = max(round(v, 3) for v in dev_ndcg.values())
    return next(name for name in (*RETRIEVERS, *RERANKED) if name in dev_ndcg and round(dev_ndcg[name], 3) == best)


def add_reranked(out: Path, beir: data.Beir, runs: dict[str, dict[str, evaluate.Run]]) -> dict[str, int]:
    """Add RERANKED's runs to each split's runs: out/reranker reorders each first stage's top k, k swept on dev
    (the mode's rerank_depths); returns the chosen k per reranked retriever."""
    model = reranking.load_reranker(str(out / "reranker"), verbose=False)
    depths = config.settings().rerank_depths
    dev_q = beir.split_queries("dev")
    firsts = [runs["dev"][first] for first in RERANKED.values()]
    scores = reranking.candidate_scores(model, firsts, dev_q, beir.corpus, max(depths))
    best_k = {}
    for name, first in RERANKED.items():
        curve = reranking.sweep_depths(runs["dev"][first], scores, beir.qrels["dev"], depths)
        best_k[name] = reranking.best_depth(curve)
        runs["dev"][name] = reranking.reorder(runs["dev"][first], scores, best_k[name])
    firsts = [runs["test"][first] for first in RERANKED.values()]
    scores = reranking.candidate_scores(model, firsts, beir.split_queries("test"), beir.corpus, max(best_k.values()))
    for name, first in RERANKED.items():
        runs["test"][name] = reranking.reorder(runs["test"][first], scores, best_k[name])
    return best_k


def split_runs(beir: data.Beir, split: str, bm25: Any, docs: dict[str, np.ndarray], models: dict[str, Any]) -> dict:
    """BM25 and each dense model's run over the whole corpus for one split's questions (depth 100, for fusion)."""
    queries = beir.split_queries(split)
    query_ids = list(queries)
    runs = {"bm25": evaluate.bm25_search(bm25, queries)}
    for name, model in models.items():
        emb = evaluate.encode(model, [queries[q] for q in query_ids])
        runs[name] = evaluate.search_index(evaluate.flat_index(docs[name]), bm25[1], query_ids, emb)
    return runs


def evaluate_stage(cfg: RunConfig, out: Path, base: Any) -> tuple[dict[str, Any], str]:
    """Every retriever on the dev questions (whole corpus), the choice among them, then each once on test;
    metrics.json with 95% intervals."""
    from embtune_utils import models

    beir = data.load_beir(out / "dataset")
    finetuned = models.load_model(str(out / "model"), verbose=False)
    _, texts = evaluate.doc_texts(beir.corpus)
    big = len(texts) > 2000
    docs = {"finetuned": evaluate.encode(finetuned, texts, show_progress=big)}
    np.save(out / "corpus_embeddings.npy", docs["finetuned"])  # the deploy stage reuses them
    docs["base"] = evaluate.encode(base, texts, show_progress=big)
    np.save(out / "base_corpus_embeddings.npy", docs["base"])
    bm25 = evaluate.bm25_index(beir.corpus)
    dense = {"base": base, "finetuned": finetuned}
    runs = {split: split_runs(beir, split, bm25, docs, dense) for split in ("dev", "test")}
    weight, _ = evaluate.tune_fusion_weight(runs["dev"]["finetuned"], runs["dev"]["bm25"], beir.qrels["dev"])
    for split_run in runs.values():
        fused = {"hybrid": None, "hybrid weighted": weight}
        split_run |= {h: deploy.fuse(h, split_run["finetuned"], split_run["bm25"], w) for h, w in fused.items()}
    rerank_k = add_reranked(out, beir, runs) if cfg.reranks() else {}
    names = (*RETRIEVERS, *rerank_k)
    dev = {n: evaluate.evaluate_run(runs["dev"][n], beir.qrels["dev"], ("ndcg@10",))["ndcg@10"] for n in names}
    chosen = choose(dev)  # decided before any test score is computed below
    qrels = beir.qrels["test"]
    per_query = {name: evaluate.per_query_metrics(runs["test"][name], qrels) for name in names}
    with_ci = {name: evaluate.metrics_with_ci(pq) for name, pq in per_query.items()}

    def ndcg(name: str) -> np.ndarray:
        return np.array([per_query[name][q]["ndcg@10"] for q in qrels])

    paired = {f"finetuned-{b}": evaluate.paired_test(ndcg("finetuned"), ndcg(b)) for b in ("base", "bm25")}
    paired |= {f"{n}-bm25": evaluate.paired_test(ndcg(n), ndcg("bm25")) for n in ("hybrid", "hybrid weighted")}
    paired |= {f"{n}-bm25": evaluate.paired_test(ndcg(n), ndcg("bm25")) for n in rerank_k}
    metrics = {
        "test": {name: {m: with_ci[name][m][0] for m in SCHEMA_METRICS} for name in names},
        "ci95": {label: [paired[label]["lo"], paired[label]["hi"]] for label in ("finetuned-base", "finetuned-bm25")},
        "n_test_queries": len(qrels),
        "chosen": chosen,
        "dev": {"ndcg@10": dev, "n_queries": len(beir.qrels["dev"]), "fusion_weight": weight},
    }
    if rerank_k:
        metrics["dev"]["rerank_k"] = rerank_k
    evaluate.write_json(out / "metrics.json", metrics)
    details = {"test_ci": {n: {m: list(v[1:]) for m, v in ci.items()} for n, ci in with_ci.items()}, "paired": paired}
    details["bm25_test"] = {q: per_query["bm25"][q]["ndcg@10"] for q in qrels}  # the deploy stage's paired test
    behind = [q for q in qrels if per_query["finetuned"][q]["ndcg@10"] < per_query["bm25"][q]["ndcg@10"]]
    kinds = [evaluate.failure_kind(beir.queries[q], runs["test"]["finetuned"][q][0][0], qrels[q], beir.corpus)
             for q in behind if runs["test"]["finetuned"].get(q)]  # fmt: skip
    details["finetuned_behind_bm25"] = {"queries": len(behind)} | {k: kinds.count(k) for k in evaluate.FAILURE_KINDS}
    evaluate.write_json(out / "eval_details.json", details)
    t = metrics["test"]
    line = ", ".join(f"{name} {t[name]['ndcg@10']:.3f}" for name in names)
    dev_line = ", ".join(f"{name} {v:.3f}" for name, v in dev.items())
    result = {"ndcg@10": {n: t[n]["ndcg@10"] for n in names}, "chosen": chosen, "dev": dev, "weight": weight}
    return result, f"dev NDCG@10: {dev_line} → {chosen}; test ({len(qrels)} queries): {line}"


def deploy_stage(cfg: RunConfig, out: Path, base: Any) -> tuple[dict[str, Any], str]:
    """Deploy the retriever chosen on dev: its dense part compressed by notebook 07's rule on dev (>= 99% of the
    float pipeline's dev NDCG@10, smallest index), saved as index/ beside its model; then the saved artifact, exactly
    as `embtune search` loads it, answers the dev and test questions once."""
    from embtune_utils import models

    beir = data.load_beir(out / "dataset")
    metrics = json.loads((out / "metrics.json").read_text())
    chosen, weight = metrics["chosen"], metrics["dev"]["fusion_weight"]
    served = SERVES[chosen]
    rerank = {"model": "../reranker", "k": metrics["dev"]["rerank_k"][chosen]} if chosen in RERANKED else None
    doc_ids = list(beir.corpus)
    bm25 = evaluate.bm25_index(beir.corpus)
    rows: dict[str, list[dict[str, Any]]] = {}
    if served == "bm25":
        pick = {"config": "bm25", "spec": {}}
        deploy.save_index(out, beir.corpus, None, {}, {"config": "bm25"}, served="bm25", rerank=rerank)
    else:
        model_dir = "base_model" if chosen == "base" else "model"
        if chosen == "base":
            base.save(str(out / model_dir))
        model = models.load_model(str(out / model_dir), verbose=False)
        docs = np.load(out / ("base_corpus_embeddings.npy" if chosen == "base" else "corpus_embeddings.npy"))
        dim = docs.shape[1]
        kinds = [("flat", False), ("int8", False), ("int8", True)] + ([("binary", True)] if dim % 8 == 0 else [])
        for split in ("dev", "test"):
            qrels = beir.qrels[split]
            queries = {q: beir.queries[q] for q in qrels}
            emb = evaluate.encode(model, list(queries.values()))
            name = "base" if chosen == "base" else "finetuned"
            dense_rows = [deploy.measure(name, docs, emb, doc_ids, qrels, kind=k, rescore=r) for k, r in kinds]
            rows[split] = dense_rows if served == "dense" else [
                deploy.measure_hybrid(served, r, docs, bm25, queries, emb, qrels, weight) for r in dense_rows
            ]  # fmt: skip
            deploy.finish_table(rows[split], rows[split][0]["config"], {})
        pick = deploy.recommend(rows["dev"])  # chosen on dev: choosing on test would overstate its test score
        spec = pick["spec"]
        index = deploy.build_index(docs, spec["kind"], spec["rescore"], **spec["params"])
        quality = {"config": pick["config"], "dev ndcg@10": pick["ndcg@10"]}
        if rerank:  # what is served: the compressed first stage, then the reranker
            served_config = f"{pick['config']} + rerank top {rerank['k']}"
            quality = {"config": served_config, "dev ndcg@10": metrics["dev"]["ndcg@10"][chosen]}
        deploy.save_index(out, beir.corpus, index, spec, quality, served, weight, model=model_dir, rerank=rerank)
    deployed = deploy.load_artifact(out)  # what `embtune search --artifact out` serves
    scores = {}
    for split in ("dev", "test"):
        qrels = beir.qrels[split]
        run = deployed.run({q: beir.queries[q] for q in qrels}, k=10)
        scores[split] = [m["ndcg@10"] for m in evaluate.per_query_metrics(run, qrels, ("ndcg@10",)).values()]
    bm25_test = json.loads((out / "eval_details.json").read_text())["bm25_test"]
    vs_bm25 = evaluate.paired_test(scores["test"], [bm25_test[q] for q in beir.qrels["test"]])
    mean, lo, hi = evaluate.bootstrap_ci(scores["test"])
    metrics["deployed"] = {"retriever": chosen, "config": pick["config"], "dev ndcg@10": float(np.mean(scores["dev"]))}
    metrics["deployed"] |= {"ndcg@10": mean, "ci95": [lo, hi], "minus_bm25": vs_bm25}
    evaluate.write_json(out / "metrics.json", metrics)
    keep = ("config", "ndcg@10", "pct_of_ref", "index_bytes", "p50_ms", "p95_ms")
    table = [{k: r[k] for k in keep} for r in rows.get("test", [])]
    result = {"chosen": chosen, "config": pick["config"], "dev_pct": pick.get("pct_of_ref", 100.0)}
    result |= {"test": mean, "test_ci": [lo, hi], "minus_bm25": vs_bm25, "table": table}
    line = f"{chosen}: {pick['config']}, test NDCG@10 {mean:.3f} [{lo:.3f}, {hi:.3f}] through the saved artifact"
    return result, line + f", {vs_bm25['mean']:+.3f} [{vs_bm25['lo']:+.3f}, {vs_bm25['hi']:+.3f}] vs BM25"


def report_stage(cfg: RunConfig, out: Path, records: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """report.md with the metrics, the deployment choice, stage timings and two plots (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = json.loads((out / "metrics.json").read_text())
    details = json.loads((out / "eval_details.json").read_text())
    load, queries, trained = (records[s]["result"] for s in ("load", "queries", "train"))
    dep = records["deploy"]["result"]
    names = list(metrics["test"])  # RETRIEVERS, then RERANKED with --rerank
    fig, ax = plt.subplots(figsize=(6 + len(names) - len(RETRIEVERS), 3.5))
    values = [metrics["test"][n]["ndcg@10"] for n in names]
    spans = [details["test_ci"][n]["ndcg@10"] for n in names]
    ax.bar(names, values, yerr=np.array([[v - lo, hi - v] for v, (lo, hi) in zip(values, spans)]).T, capsize=4)
    ax.set(ylabel="test NDCG@10 (95% CI)", title=f"{metrics['n_test_queries']} test queries")
    fig.tight_layout()
    fig.savefig(out / "ndcg.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if trained.get("dev"):
        steps, scores = zip(*trained["dev"])
        ax.plot(steps, scores, marker="o")
    ax.set(xlabel="training step", ylabel="dev NDCG@10", title="Dev score during training")
    fig.tight_layout()
    fig.savefig(out / "training.png", dpi=120)
    plt.close(fig)

    t = metrics["test"]
    lines = ["# embtune run report", "", advice(metrics, details, str(out)), ""]
    lines += [
        f"Corpus `{cfg.corpus}` ({load['kind']}): {load['documents']} documents, {load['chunks']} passages. "
        f"Base model `{cfg.base_model}`, mode `{cfg.mode}`, seed {cfg.seed}. Machine: {_machine_line()}.",
        "",
        f"**Test queries: {metrics['n_test_queries']}, {queries['test_kind']}.**"
        + (
            " They are questions a generator asked about passages of documents that no training step saw, so they"
            " measure how well a model finds the passage a question was written from, not real users' questions."
            if queries["test_kind"].startswith("generated")
            else ""
        ),  # fmt: skip
        "",
        f"Training: {queries['pairs']['real']} real + {queries['pairs']['synthetic']} synthetic pairs"
        + (f" (generator: {queries['generator']}; filters kept {queries['filters']})" if "generator" in queries else "")
        + f"; dev {queries['dev_queries']} queries{' (' + queries['dev_from'] + ')' if 'dev_from' in queries else ''}"
        f"; budget {trained.get('budget', {})}; {trained['steps']} steps, best dev NDCG@10 {trained['best']:.3f} (on a "
        f"{DEV_CORPUS_MAX}-passage dev sample), {trained['seconds']:.0f} s.",
        "",
        f"**The choice, on the {metrics['dev']['n_queries']} dev questions** (whole corpus; the weighted hybrid's "
        f"dense weight {metrics['dev']['fusion_weight']:g} was tuned on them too"
        + (f"; the reranker's k too: {metrics['dev']['rerank_k']}" if "rerank_k" in metrics["dev"] else "")
        + "), then test, scored once:",
        "",
        "| retriever | dev NDCG@10 | test " + " | test ".join(SCHEMA_METRICS) + " |",
        "|---|---|" + "---|" * len(SCHEMA_METRICS),
    ]
    for name in names:
        lo, hi = details["test_ci"][name]["ndcg@10"]
        cells = [f"{t[name]['ndcg@10']:.3f} [{lo:.3f}, {hi:.3f}]"] + [f"{t[name][m]:.3f}" for m in SCHEMA_METRICS[1:]]
        label = f"**{name}** (chosen)" if name == metrics["chosen"] else name
        lines.append(f"| {label} | {metrics['dev']['ndcg@10'][name]:.3f} | " + " | ".join(cells) + " |")
    lines += [""]
    for label, p in details["paired"].items():
        verdict = {1: "better", -1: "worse", 0: "no difference beyond the noise"}[evaluate.ci_side(p["lo"], p["hi"])]
        lines.append(
            f"- {label}: {p['mean']:+.3f} NDCG@10 [{p['lo']:+.3f}, {p['hi']:+.3f}], p = {p['p']:.4f} ({verdict})"
        )
    lines += [
        "",
        "![NDCG@10](ndcg.png) ![training](training.png)",
        "",
        f"Deployment: **{dep['config']}** (the dense part compressed by notebook 07's rule, on dev: the smallest "
        f"index keeping 99% of the uncompressed pipeline), test NDCG@10 {dep['test']:.3f} through the saved artifact. "
        f'Search it: `embtune search "your question" --artifact {out}`.',
        "",
    ]
    if dep.get("table"):
        lines += ["| deployment candidate (test) | NDCG@10 | % of uncompressed | index bytes | p50 ms | p95 ms |"]
        lines += ["|---|---|---|---|---|---|"]
        lines += [f"| {r['config']} | {r['ndcg@10']:.3f} | {r['pct_of_ref']:.1f} | {r['index_bytes']:,} | "
                  f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} |" for r in dep["table"]]  # fmt: skip
        lines += [""]
    lines += ["| stage | seconds |", "|---|---|"]
    lines += [f"| {s} | {records[s]['seconds']:.1f} |" for s in STAGES if s in records]
    config.write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return {"report": "report.md"}, f"{out / 'report.md'}"


def advice(metrics: dict[str, Any], details: dict[str, Any], out: str) -> str:
    """The report's opening: which retriever to use, its test NDCG@10 and its paired difference to BM25, and what
    it means when the fine-tuned dense model alone loses to BM25."""
    dep = metrics["deployed"]
    d = dep["minus_bm25"]
    lo, hi = dep["ci95"]
    side = {1: "ahead of", -1: "behind", 0: "level with"}[evaluate.ci_side(d["lo"], d["hi"])]
    what = "BM25 alone" if dep["retriever"] == "bm25" else f"the {dep['retriever']} retriever ({dep['config']})"
    text = (
        f'**Use {what}**: `embtune search "..." --artifact {out}`. Test NDCG@10 {dep["ndcg@10"]:.3f} '
        f"[{lo:.3f}, {hi:.3f}] through the saved artifact"
    )
    if dep["retriever"] != "bm25":
        text += f", {side} BM25 ({d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], paired)"
    text += "; chosen on the dev questions before test was scored."
    behind = details["paired"]["finetuned-bm25"]
    if evaluate.ci_side(behind["lo"], behind["hi"]) < 0:
        kinds = details.get("finetuned_behind_bm25", {})
        where = ", ".join(f"{kinds[k]} {k}" for k in evaluate.FAILURE_KINDS if kinds.get(k))
        text += (
            f" The fine-tuned dense model alone is behind BM25 ({behind['mean']:+.3f} [{behind['lo']:+.3f}, "
            f"{behind['hi']:+.3f}]): do not serve it alone. Keep the hybrid (BM25 catches the exact words dense "
            "misses), and to lift dense train on more or better queries — real users' questions if you have them, "
            "or a stronger generator (`--generator openai`)."
        )
        if where:
            text += f" Where it loses ({kinds['queries']} test questions, its top passage): {where}."
    return text


def _machine_line() -> str:
    info = config.describe()
    return f"{info['device']}, {info['cpu_count']} CPU cores, {info['precision']}, torch {info['torch']}"


# ---------------------------------------------------------------- the runner


UPSTREAM = {"rerank": ("queries",), "evaluate": ("train", "rerank")}  # stages that do not follow the one before


def upstream_key(stage: str, keys: dict[str, str]) -> str:
    """What a stage's key is chained to: the previous stage's key, or those in UPSTREAM (the reranker reads only the
    training questions, so a changed --epochs or --hard-negatives does not retrain it)."""
    before = UPSTREAM.get(stage) or STAGES[max(0, STAGES.index(stage) - 1) : STAGES.index(stage)]
    return "+".join(keys[s] for s in before)


def run(cfg: RunConfig) -> dict[str, Any]:
    """Run (or resume) every stage; returns the metrics. Stage records and run.json are written as it goes."""
    from embtune_utils import models

    cfg.check()
    os.environ["EMBTUNE_MODE"] = config.get_mode(cfg.mode)  # the package's functions read the mode from here
    config.set_seed(cfg.seed)
    out = Path(cfg.out).expanduser()
    synth.make_generator(cfg.generator, out / "batch", cfg.base_url)  # no key, bad URL: fail before anything is written
    out.mkdir(parents=True, exist_ok=True)
    base = models.load_model(cfg.base_model, verbose=False)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    records: dict[str, dict[str, Any]] = {}
    kind = {"kind": None}

    steps = {
        "load": lambda: load_stage(cfg, out, base.tokenizer),
        "queries": lambda: queries_stage(cfg, out, base, kind["kind"]),
        "negatives": lambda: negatives_stage(cfg, out, base),
        "train": lambda: train_stage(cfg, out),
        "rerank": lambda: rerank_stage(cfg, out, base),
        "evaluate": lambda: evaluate_stage(cfg, out, base),
        "deploy": lambda: deploy_stage(cfg, out, base),
        "report": lambda: report_stage(cfg, out, records),
    }
    keys: dict[str, str] = {}
    for name in STAGES:
        key = _key(name, cfg.settings_of(name), upstream_key(name, keys))
        path = out / "stages" / f"{name}.json"
        previous = json.loads(path.read_text()) if path.exists() else None
        if previous and previous["key"] == key:
            print(f"[{name}] done earlier, skipped: {previous['line']}", flush=True)
            records[name] = previous | {"skipped": True}
        else:
            print(f"[{name}] running ...", flush=True)
            start = time.perf_counter()
            result, line = steps[name]()
            records[name] = {"key": key, "result": result, "line": line, "seconds": time.perf_counter() - start}
            records[name]["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
            evaluate.write_json(path, records[name])
            print(f"[{name}] {line} ({records[name]['seconds']:.1f} s)", flush=True)
        if name == "load":
            kind["kind"] = records[name]["result"]["kind"]
        keys[name] = key
        _write_run_json(cfg, out, records, started)
    return json.loads((out / "metrics.json").read_text())


def _write_run_json(cfg: RunConfig, out: Path, records: dict[str, dict[str, Any]], started: str) -> None:
    """run.json: the configuration, versions and hardware, and each stage's time (and whether it was skipped)."""
    stages = {n: {"seconds": round(r["seconds"], 1), "skipped": r.get("skipped", False)} for n, r in records.items()}
    evaluate.write_json(
        out / "run.json",
        {"config": asdict(cfg), "machine": config.describe(), "started": started, "stages": stages},
    )
