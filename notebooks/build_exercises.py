"""Write the exercise notebooks (notebooks/exercises/) and their solutions (notebooks/solutions/) from one spec.

Each exercise is a function (or a prediction) to fill in and a check from `embtune_utils.exercises` that compares it
with the course's own code. Run `python notebooks/build_exercises.py` after changing the spec; tests/test_exercises.py
fails when the notebooks and this file disagree. `make test` executes both folders under nbval.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
STUB = "    raise NotImplementedError  # your code here"
COLAB = (  # the course notebooks' guarded install cell: it acts on Colab only
    "import sys\n\n"
    'if "google.colab" in sys.modules:  # only on Colab: fetch the course and install its helper package\n'
    "    ![ -d /content/embtune ] || git clone --depth 1 https://github.com/embtune/embtune.git /content/embtune\n"
    "    %pip install --quiet --no-deps -e /content/embtune\n"
    "    %pip install --quiet -r /content/embtune/notebooks/colab-requirements.txt  # floors: never a downgrade\n"
    '    sys.path.insert(0, "/content/embtune")\n'
    "    %cd /content/embtune/notebooks"
)


@dataclass(frozen=True)
class Exercise:
    """One task: its text, the code a learner starts from (with STUB), the solution, and the check call."""

    title: str
    task: str
    start: str  # contains {body}: STUB in the exercise notebook, `solution` in the solutions notebook
    solution: str
    check: str


@dataclass(frozen=True)
class Sheet:
    """The exercises of one course notebook."""

    notebook: str
    title: str
    setup: str
    exercises: tuple[Exercise, ...]


SHEETS = (
    Sheet(
        "01_rag_basics",
        "RAG basics",
        "from embtune_utils import data, exercises, models",
        (
            Exercise(
                "recall@k",
                "Write `recall_at_k(ranked, relevant, k)`: the share of the relevant documents (`relevant` maps a "
                "document id to 1) found in the first `k` of `ranked`; 0 when nothing is relevant.",
                "def recall_at_k(ranked, relevant, k):\n{body}",
                "    n_relevant = sum(1 for r in relevant.values() if r > 0)\n"
                "    if n_relevant == 0:\n        return 0.0\n"
                "    return sum(1 for doc in ranked[:k] if relevant.get(doc, 0) > 0) / n_relevant",
                "exercises.check_recall_at_k(recall_at_k)",
            ),
            Exercise(
                "MRR@k",
                "Write `mrr_at_k(ranked, relevant, k)`: 1 / (rank of the first relevant document in the top `k`), "
                "ranks counted from 1; 0 if none is there.",
                "def mrr_at_k(ranked, relevant, k):\n{body}",
                "    for rank, doc in enumerate(ranked[:k], start=1):\n"
                "        if relevant.get(doc, 0) > 0:\n            return 1.0 / rank\n    return 0.0",
                "exercises.check_mrr_at_k(mrr_at_k)",
            ),
            Exercise(
                "Chunk overlap: predict, then measure",
                "Notebook 01 cuts articles into chunks of 200 word pieces with 32 shared between neighbours. With an "
                'overlap of 64 instead of 0, will an article give "more", "fewer" or the "same" number of chunks? '
                "Write your prediction first; the cell then counts them.",
                "{body}\n"
                "tokenizer = models.load_model(verbose=False).tokenizer\n"
                'article = data.load_covidqa()[0]["text"]\n'
                "counts = {overlap: len(data.chunk_spans(article, tokenizer, 200, overlap)) for overlap in (0, 64)}\n"
                "print(counts)",
                'PREDICTION = "more"  # each chunk advances by 200 - overlap word pieces, so more overlap, more chunks',
                "exercises.check_overlap_prediction(PREDICTION, counts)",
            ),
        ),
    ),
    Sheet(
        "02_synthetic_data",
        "Synthetic data",
        "import re\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "Copy ratio",
                "Write `copy_ratio(query, passage)`: lower-case both, split them into words (`re.findall(r'\\w+', "
                "text)`), and return the share of the query's distinct word 4-grams that occur in the passage "
                "(0 when the query has fewer than 4 words). Notebook 02 drops queries above 0.75: copied sentences.",
                "def copy_ratio(query, passage):\n{body}",
                '    q, p = re.findall(r"\\w+", query.lower()), re.findall(r"\\w+", passage.lower())\n'
                "    grams = {tuple(q[i : i + 4]) for i in range(len(q) - 3)}\n"
                "    if not grams:\n        return 0.0\n"
                "    return len(grams & {tuple(p[i : i + 4]) for i in range(len(p) - 3)}) / len(grams)",
                "exercises.check_copy_ratio(copy_ratio)",
            ),
            Exercise(
                "Length filter",
                "Write `keep_length(pairs, min_words, max_words)`: the pairs (dicts with a `query`) whose query has "
                "between `min_words` and `max_words` words (`re.findall(r'\\w+', ...)`), in their order.",
                "def keep_length(pairs, min_words, max_words):\n{body}",
                '    n_words = [len(re.findall(r"\\w+", p["query"].lower())) for p in pairs]\n'
                "    return [p for p, n in zip(pairs, n_words) if min_words <= n <= max_words]",
                "exercises.check_length_filter(keep_length)",
            ),
        ),
    ),
    Sheet(
        "03_negative_mining",
        "Negative mining",
        "import numpy as np\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "The hardest negative",
                "Write `hardest_negative(query, docs, positives)`: `docs` are unit vectors (one per row), `query` a "
                "vector; return the row index of the document with the highest dot product that is **not** in the "
                "set `positives`. This is what dense mining does, before any guard.",
                "def hardest_negative(query, docs, positives):\n{body}",
                "    for i in np.argsort(-(docs @ query)):\n"
                "        if int(i) not in positives:\n            return int(i)",
                "exercises.check_hardest_negative(hardest_negative)",
            ),
            Exercise(
                "How many negatives are false?",
                "Write `false_negative_share(rows, corpus)`: over all the negatives of all rows, the share whose "
                "text (`corpus[chunk_id]`) contains the row's `answer`. Notebook 03's audit uses this as one sign "
                "of a false negative.",
                "def false_negative_share(rows, corpus):\n{body}",
                '    flags = [row["answer"] in corpus[neg] for row in rows for neg in row["negatives"]]\n'
                "    return sum(flags) / len(flags)",
                "exercises.check_false_negative_share(false_negative_share)",
            ),
        ),
    ),
    Sheet(
        "04_losses",
        "Losses",
        "import numpy as np\nimport torch\nimport torch.nn.functional as F\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "InfoNCE from scratch",
                "Write `info_nce(q, d, scale)`: `q` holds n query embeddings, `d` n positives (row i for query i) "
                "followed by any extra negatives. Normalise both, score `scale * q @ d.T`, and return the mean "
                "cross-entropy with target i for row i.",
                "def info_nce(q, d, scale):\n{body}",
                "    scores = scale * F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T\n"
                "    return F.cross_entropy(scores, torch.arange(len(q)))",
                "exercises.check_info_nce(info_nce)",
            ),
            Exercise(
                "In-batch accuracy",
                "Write `in_batch_accuracy(queries, docs)`: the share of rows i for which `docs[i]` has the highest "
                "dot product with `queries[i]` among all the docs. It is what the loss above pushes up.",
                "def in_batch_accuracy(queries, docs):\n{body}",
                "    return float(np.mean(np.argmax(queries @ docs.T, axis=1) == np.arange(len(queries))))",
                "exercises.check_in_batch_accuracy(in_batch_accuracy)",
            ),
        ),
    ),
    Sheet(
        "05_training",
        "Training",
        "from embtune_utils import exercises, models, train\n\n"
        "model = models.load_model(verbose=False)\n"
        "train.freeze_lower_layers(model, 3)  # notebook 05's 'frozen lower layers' run",
        (
            Exercise(
                "What trains?",
                "Write `trainable_share(model)`: the share of the model's parameters (counted in numbers, "
                "`p.numel()`) that have `requires_grad` set. Predict it first: 3 of 6 blocks and the word "
                "embeddings are frozen.",
                "def trainable_share(model):\n{body}",
                "    params = list(model.parameters())\n"
                "    return sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)",
                "exercises.check_trainable_share(trainable_share, model)",
            ),
            Exercise(
                "How many steps?",
                "Write `n_steps(rows, batch_size, epochs)`: the optimizer steps of a run that keeps the last, "
                "smaller batch. Notebook 05's final run had 3,007 pairs at batch 32: check its 94 steps.",
                "def n_steps(rows, batch_size, epochs):\n{body}",
                "    return -(-rows // batch_size) * epochs  # ceiling division",
                "exercises.check_steps(n_steps)",
            ),
        ),
    ),
    Sheet(
        "06_evaluation",
        "Evaluation",
        "import numpy as np\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "Reciprocal rank fusion",
                "Write `rrf(runs, k)`: `runs` is a list of runs, each `{query_id: [(doc_id, score), ...]}` best "
                "first. Each document's fused score is the sum over runs of `1 / (k + rank)`, rank from 1. Return "
                "`{query_id: [(doc_id, fused), ...]}` sorted best first.",
                "def rrf(runs, k):\n{body}",
                "    fused = {}\n"
                "    for run in runs:\n"
                "        for qid, ranked in run.items():\n"
                "            scores = fused.setdefault(qid, {})\n"
                "            for rank, (doc, _) in enumerate(ranked, start=1):\n"
                "                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)\n"
                "    return {q: sorted(s.items(), key=lambda item: -item[1]) for q, s in fused.items()}",
                "exercises.check_rrf(rrf)",
            ),
            Exercise(
                "A bootstrap interval",
                "Write `bootstrap_ci(values, n_resamples, seed)`: resample the per-question values with "
                "replacement `n_resamples` times, and return (mean, 2.5th percentile, 97.5th percentile) of the "
                "resampled means. More questions should give a narrower interval: the check tests that too.",
                "def bootstrap_ci(values, n_resamples, seed):\n{body}",
                "    rng = np.random.default_rng(seed)\n"
                "    means = values[rng.integers(0, len(values), (n_resamples, len(values)))].mean(axis=1)\n"
                "    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))",
                "exercises.check_bootstrap_ci(bootstrap_ci)",
            ),
        ),
    ),
    Sheet(
        "06b_reranking",
        "A fine-tuned reranker",
        "from embtune_utils import exercises",
        (
            Exercise(
                "Rerank the top k",
                "Write `rerank_top_k(ranked, scores, k)`: `ranked` is one question's first-stage list "
                "`[(doc_id, score), ...]` best first, `scores` the reranker's score of each of its top `k` "
                "documents. Return the document ids: the top `k` ordered by the reranker's score, highest first "
                "(equal scores keep their first-stage order), then the rest of `ranked` in its own order.",
                "def rerank_top_k(ranked, scores, k):\n{body}",
                "    head = sorted((doc for doc, _ in ranked[:k]), key=lambda doc: -scores[doc])  # stable\n"
                "    return head + [doc for doc, _ in ranked[k:]]",
                "exercises.check_rerank_top_k(rerank_top_k)",
            ),
            Exercise(
                "Forward passes",
                "A cross-encoder needs one forward pass per (question, chunk) pair. Write `forward_passes(runs, "
                "depth)`: `runs` is a list of first-stage runs `{question_id: [(doc_id, score), ...]}` over the same "
                "questions; return how many pairs must be scored to rerank the top `depth` of every run, each pair "
                "scored once (a chunk in the top of two runs is scored once).",
                "def forward_passes(runs, depth):\n{body}",
                "    return sum(len({doc for run in runs for doc, _ in run[q][:depth]}) for q in runs[0])",
                "exercises.check_forward_passes(forward_passes)",
            ),
        ),
    ),
    Sheet(
        "07_quantized_deployment",
        "Quantized deployment",
        "import numpy as np\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "Binary quantization",
                "Write `to_binary(emb)`: one bit per dimension, 1 where the value is > 0, packed 8 bits to a byte "
                "(`np.packbits` along the rows). A 384-dimensional float32 vector (1,536 bytes) becomes 48 bytes.",
                "def to_binary(emb):\n{body}",
                "    return np.packbits(emb > 0, axis=-1)",
                "exercises.check_to_binary(to_binary)",
            ),
            Exercise(
                "Hamming distance",
                "Write `hamming(query, docs)`: the number of differing bits between one packed query (a uint8 row) "
                "and each packed document (XOR, then count the ones: `np.unpackbits`).",
                "def hamming(query, docs):\n{body}",
                "    return np.unpackbits(np.bitwise_xor(docs, query), axis=1).sum(axis=1)",
                "exercises.check_hamming(hamming)",
            ),
        ),
    ),
    Sheet(
        "08_beyond",
        "Beyond the basics",
        "import numpy as np\n\nfrom embtune_utils import exercises",
        (
            Exercise(
                "Promote or roll back",
                "Write `decide(current, candidate, slices, tolerance)`: per-question dev scores of two models and "
                "each question's slice (topic). Return 'promote' if the candidate's mean is higher overall and no "
                "slice's mean drops by more than `tolerance`; else 'rollback'.",
                "def decide(current, candidate, slices, tolerance):\n{body}",
                "    delta = {q: candidate[q] - current[q] for q in current}\n"
                '    if np.mean(list(delta.values())) <= 0:\n        return "rollback"\n'
                "    for s in set(slices.values()):\n"
                "        if np.mean([d for q, d in delta.items() if slices[q] == s]) < -tolerance:\n"
                '            return "rollback"\n'
                '    return "promote"',
                "exercises.check_promote(decide)",
            ),
            Exercise(
                "A keyboard typo",
                "Write `typo(word, rng)`: words shorter than 4 letters stay as they are; otherwise make one change "
                "that keeps the first and last letters (swap two inner letters, drop or double one) and returns a "
                "different word. `rng` is a `random.Random`.",
                "def typo(word, rng):\n{body}",
                "    if len(word) < 4:\n        return word\n"
                "    while True:\n"
                "        i = rng.randrange(1, len(word) - 2)\n"
                "        swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]\n"
                "        dropped = word[:i] + word[i + 1 :]\n"
                "        out = rng.choice([swapped, dropped])\n"
                "        if out != word:\n            return out",
                "exercises.check_keyboard_typo(typo)",
            ),
        ),
    ),
)


def notebook(sheet: Sheet, solved: bool) -> nbformat.NotebookNode:
    """The exercise notebook of a sheet, or (solved=True) its solutions, whose checks must pass."""
    kind = "Solutions" if solved else "Exercises"
    other = f"../exercises/{sheet.notebook}.ipynb" if solved else f"../solutions/{sheet.notebook}.ipynb"
    intro = (
        f"# {kind} · {sheet.notebook[:2]} {sheet.title}\n\n"
        f"For notebook `{sheet.notebook}.ipynb`. Fill in each function; the cell below it checks it against the "
        "course's own code and prints ✓ when it is right, · when it is not solved yet, or fails with what differs. "
        f"{'The exercises without answers' if solved else 'Solutions'}: [{other}]({other}). "
        "Written by `notebooks/build_exercises.py`."
    )
    cells = [new_markdown_cell(intro), new_code_cell(COLAB), new_code_cell(sheet.setup)]
    for i, ex in enumerate(sheet.exercises, start=1):
        cells.append(new_markdown_cell(f"## {i} · {ex.title}\n\n{ex.task}"))
        prediction = not ex.start.startswith("def ")  # the learner sets PREDICTION instead of writing a function
        unsolved = "PREDICTION = None  # your prediction: 'more', 'fewer' or 'same'" if prediction else STUB
        body = ex.solution if solved else unsolved
        cells.append(new_code_cell(ex.start.replace("{body}", body)))
        cells.append(new_code_cell(f"assert {ex.check}" if solved else ex.check))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def build(root: Path = HERE) -> list[Path]:
    """Write every exercise and solutions notebook under root; returns their paths."""
    paths = []
    for sheet in SHEETS:
        for folder, solved in (("exercises", False), ("solutions", True)):
            path = root / folder / f"{sheet.notebook}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(notebook(sheet, solved), path)
            paths.append(path)
    return paths


if __name__ == "__main__":
    for written in build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(written)
