"""Course data: COVID-QA articles, token-aware chunks, answer-span labels, article-level splits, BEIR folders."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embtune_utils import config

SPLITS = ("train", "dev", "test")
COVIDQA_FILE = "covidQA_200423.json"
BUILD_VERSION = 1  # bump when chunking or labelling changes, so cached course data is rebuilt


class DataError(ValueError):
    """Input data that the course cannot use; the message names the problem and the fix."""


@dataclass
class Beir:
    """A retrieval dataset in BEIR form: corpus (id → title/text/metadata), queries (id → text), qrels per split."""

    corpus: dict[str, dict[str, Any]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    query_meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    def split_queries(self, split: str) -> dict[str, str]:
        """The queries that have qrels in `split`."""
        return {qid: self.queries[qid] for qid in self.qrels.get(split, {})}


# ---------------------------------------------------------------- COVID-QA


def _locate_answer(context: str, text: str, start: int) -> tuple[int, int, str]:
    """The (start, end) of an answer in its article and how it was found: exact, stripped or relocated."""
    stripped = text.strip()
    offset = text.find(stripped)
    if context[start : start + len(text)] == text:  # spans never keep the answer's outer whitespace
        return start + offset, start + offset + len(stripped), "exact"
    for candidate in (start + offset, start, start - 1 + offset):
        if context[candidate : candidate + len(stripped)] == stripped:
            return candidate, candidate + len(stripped), "stripped"
    hits = [i for i in range(len(context)) if context.startswith(stripped, i)]
    if not hits:
        raise DataError(f"Answer {stripped[:60]!r} does not occur in its article: fix or drop that question.")
    best = min(hits, key=lambda i: abs(i - start))
    return best, best + len(stripped), "relocated"


def load_covidqa(path: Path | str | None = None) -> list[dict[str, Any]]:
    """COVID-QA articles with their expert questions; answer offsets checked (and repaired where off)."""
    path = Path(path) if path is not None else config.data_dir() / "covid-qa" / COVIDQA_FILE
    raw = read_json(path)
    articles = []
    for entry in raw.get("data", []):
        for paragraph in entry["paragraphs"]:
            context = paragraph["context"]
            questions = []
            for qa in paragraph["qas"]:
                if qa.get("is_impossible") or not qa.get("answers"):
                    continue
                answer = qa["answers"][0]
                start, end, how = _locate_answer(context, answer["text"], answer["answer_start"])
                questions.append(
                    {
                        "id": str(qa["id"]),
                        "text": qa["question"].strip(),
                        "answer_start": start,
                        "answer_end": end,
                        "answer_offset": how,
                    }
                )
            articles.append(
                {
                    "doc_id": str(paragraph["document_id"]),
                    "title": context.split("\n", 1)[0].strip(),
                    "text": context,
                    "questions": questions,
                }
            )
    if not articles:
        raise DataError(f"{path} holds no articles: expected SQuAD-style JSON with data[].paragraphs[].context.")
    return articles


# ---------------------------------------------------------------- chunking


def chunk_spans(text: str, tokenizer: Any, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of chunks of at most `chunk_tokens` word pieces, `overlap` shared, cut between words."""
    if not 0 <= overlap < chunk_tokens:
        raise DataError(f"overlap={overlap} must be >= 0 and < chunk_tokens={chunk_tokens}: lower the overlap.")
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if not offsets:
        return []

    def starts_word(i: int) -> bool:  # token i begins a new word (so a cut before it splits no word)
        return i >= len(offsets) or offsets[i][0] == 0 or not text[offsets[i][0] - 1].isalnum()

    spans, start = [], 0
    while start < len(offsets):
        end = min(start + chunk_tokens, len(offsets))
        cut = end
        while cut > start + chunk_tokens // 2 and not starts_word(cut):
            cut -= 1
        end = cut if starts_word(cut) else end
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end >= len(offsets):
            break
        nxt = max(end - overlap, start + 1)
        while nxt < end and not starts_word(nxt):
            nxt += 1
        start = nxt
    return spans


def chunk_articles(
    articles: list[dict[str, Any]],
    tokenizer: Any,
    chunk_tokens: int = config.CHUNK_TOKENS,
    overlap: int = config.CHUNK_OVERLAP,
) -> list[dict[str, Any]]:
    """Chunks of every article: id `<doc_id>-<n>`, title, text and character offsets into the article."""
    chunks = []
    for article in articles:
        for n, (start, end) in enumerate(chunk_spans(article["text"], tokenizer, chunk_tokens, overlap)):
            chunks.append(
                {
                    "chunk_id": f"{article['doc_id']}-{n:03d}",
                    "doc_id": article["doc_id"],
                    "title": article["title"],
                    "text": article["text"][start:end],
                    "char_start": start,
                    "char_end": end,
                }
            )
    return chunks


def label_questions(
    articles: list[dict[str, Any]], chunks: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, int]], Counter]:
    """Relevant chunks per question: those holding the whole answer, else (answer crosses a cut) all it touches."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk["doc_id"], []).append(chunk)
    qrels, stats = {}, Counter()
    for article in articles:
        for q in article["questions"]:
            s, e = q["answer_start"], q["answer_end"]
            doc_chunks = by_doc.get(article["doc_id"], [])
            inside = [c["chunk_id"] for c in doc_chunks if c["char_start"] <= s and e <= c["char_end"]]
            if inside:
                stats["answer inside one chunk" if len(inside) == 1 else "answer inside several (overlap)"] += 1
            else:
                inside = [c["chunk_id"] for c in doc_chunks if c["char_start"] < e and s < c["char_end"]]
                stats["answer crosses a chunk boundary"] += 1
            qrels[q["id"]] = {cid: 1 for cid in inside}
    return qrels, stats


def split_articles(
    doc_ids: list[str], fractions: dict[str, float] = config.SPLIT_FRACTIONS, seed: int = config.SEED
) -> dict[str, str]:
    """Assign each article to one split (train/dev/test) at random with a fixed seed; no article in two."""
    ids = sorted(set(doc_ids))
    random.Random(seed).shuffle(ids)
    n_test = round(fractions["test"] * len(ids))
    n_dev = round(fractions["dev"] * len(ids))
    return {doc_id: "test" if i < n_test else "dev" if i < n_test + n_dev else "train" for i, doc_id in enumerate(ids)}


def covidqa_beir(articles: list[dict[str, Any]], tokenizer: Any, seed: int = config.SEED) -> tuple[Beir, dict]:
    """COVID-QA as a BEIR dataset: chunks as the corpus, expert questions with qrels per article split."""
    chunks = chunk_articles(articles, tokenizer)
    qrels_all, label_stats = label_questions(articles, chunks)
    split_of = split_articles([a["doc_id"] for a in articles], seed=seed)
    corpus = {
        c["chunk_id"]: {
            "title": c["title"],
            "text": c["text"],
            "metadata": {"doc_id": c["doc_id"], "char_start": c["char_start"], "char_end": c["char_end"]},
        }
        for c in chunks
    }
    queries, query_meta, qrels = {}, {}, {s: {} for s in SPLITS}
    for article in articles:
        for q in article["questions"]:
            queries[q["id"]] = q["text"]
            answer = article["text"][q["answer_start"] : q["answer_end"]]
            query_meta[q["id"]] = {"doc_id": article["doc_id"], "answer": answer}
            qrels[split_of[article["doc_id"]]][q["id"]] = qrels_all[q["id"]]
    stats = {
        "articles": len(articles),
        "questions": len(queries),
        "chunks": len(corpus),
        "articles_per_split": dict(Counter(split_of.values())),
        "questions_per_split": {s: len(qrels[s]) for s in SPLITS},
        "chunks_per_split": dict(Counter(split_of[c["doc_id"]] for c in chunks)),
        "labels": dict(label_stats),
        "answer_offsets": dict(Counter(q["answer_offset"] for a in articles for q in a["questions"])),
    }
    return Beir(corpus, queries, qrels, query_meta), stats


# ---------------------------------------------------------------- reading and writing files


def read_text(path: Path) -> str:
    """A UTF-8 text file, with an error that names the file and the fix when it is missing or not UTF-8."""
    if not path.is_file():
        raise DataError(f"{path} does not exist: check the path (or rebuild the data folder).")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 (byte {err.start}): re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None


def read_json(path: Path) -> Any:
    """A JSON file with clear errors for missing, non-UTF-8 or malformed files."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}; fix or re-export it.") from None


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file, each checked for the `required` keys."""
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{n} is not valid JSON ({err.msg}): one JSON object per line.") from None
        missing = [key for key in required if key not in row]
        if missing:
            raise DataError(
                f"{path}:{n} lacks {', '.join(missing)}: BEIR rows need {', '.join(required)} "
                f"(found {', '.join(sorted(row)) or 'nothing'})."
            )
        rows.append(row)
    return rows


def _unique(rows: list[dict[str, Any]], path: Path) -> None:
    counts = Counter(str(row["_id"]) for row in rows)
    dupes = [i for i, n in counts.items() if n > 1]
    if dupes:
        raise DataError(f"{path} has {len(dupes)} duplicate _id(s), e.g. {dupes[0]!r}: make every _id unique.")


def read_qrels(path: Path, corpus: dict[str, Any], queries: dict[str, str]) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (query-id, corpus-id, score, with a header), every id checked against the data."""
    qrels: dict[str, dict[str, int]] = {}
    lines = read_text(path).splitlines()
    for n, row in enumerate(csv.reader(lines, delimiter="\t"), 1):
        if n == 1 and row and row[0] == "query-id" or not row:
            continue
        if len(row) != 3:
            raise DataError(f"{path}:{n} has {len(row)} columns: qrels rows are query-id<TAB>corpus-id<TAB>score.")
        qid, did, score = row
        if did not in corpus:
            raise DataError(f"{path}:{n} points to corpus id {did!r}, which is not in corpus.jsonl: fix or drop it.")
        if qid not in queries:
            raise DataError(f"{path}:{n} points to query id {qid!r}, which is not in queries.jsonl: fix or drop it.")
        try:
            qrels.setdefault(qid, {})[did] = int(score)
        except ValueError:
            raise DataError(f"{path}:{n} has score {score!r}: scores are integers (1 = relevant).") from None
    return qrels


def load_beir(folder: Path | str) -> Beir:
    """Read a BEIR folder: corpus.jsonl, queries.jsonl and whichever of qrels/{train,dev,test}.tsv exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Data folder {folder} does not exist: check the path, or build it with write_beir().")
    corpus_rows = read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    if not corpus_rows:
        raise DataError(f"{folder / 'corpus.jsonl'} is empty: a corpus needs at least one document.")
    _unique(corpus_rows, folder / "corpus.jsonl")
    empty = [str(r["_id"]) for r in corpus_rows if not str(r["text"]).strip()]
    if empty:
        raise DataError(f"{folder / 'corpus.jsonl'} has {len(empty)} empty text(s), e.g. {empty[0]!r}: drop them.")
    query_rows = read_jsonl(folder / "queries.jsonl", ("_id", "text")) if (folder / "queries.jsonl").exists() else []
    _unique(query_rows, folder / "queries.jsonl")
    corpus = {
        str(r["_id"]): {"title": r.get("title", ""), "text": r["text"], "metadata": r.get("metadata", {})}
        for r in corpus_rows
    }
    queries = {str(r["_id"]): r["text"] for r in query_rows}
    query_meta = {str(r["_id"]): r["metadata"] for r in query_rows if r.get("metadata")}
    qrels = {
        split: read_qrels(folder / "qrels" / f"{split}.tsv", corpus, queries)
        for split in SPLITS
        if (folder / "qrels" / f"{split}.tsv").exists()
    }
    return Beir(corpus, queries, qrels, query_meta)


def write_beir(beir: Beir, folder: Path | str) -> Path:
    """Write a BEIR folder atomically (a temporary folder renamed into place), so no half folder is left."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
            for cid, doc in beir.corpus.items():
                f.write(json.dumps({"_id": cid, **doc}, ensure_ascii=False) + "\n")
        with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
            for qid, text in beir.queries.items():
                meta = {"metadata": beir.query_meta[qid]} if qid in beir.query_meta else {}
                f.write(json.dumps({"_id": qid, "text": text, **meta}, ensure_ascii=False) + "\n")
        (tmp / "qrels").mkdir()
        for split, qrels in beir.qrels.items():
            with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t", lineterminator="\n")
                writer.writerow(["query-id", "corpus-id", "score"])
                for qid, rels in qrels.items():
                    writer.writerows([qid, did, score] for did, score in rels.items())
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def load_text_folder(folder: Path | str) -> dict[str, dict[str, Any]]:
    """Documents from a folder of .txt/.md files (recursively): id = relative path, title = file stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"Folder {folder} does not exist: check the path to your documents.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".txt", ".md"} and p.is_file())
    if not files:
        raise DataError(f"{folder} has no .txt or .md files: add documents, or point to a BEIR folder instead.")
    docs = {}
    for path in files:
        text = read_text(path)
        if text.strip():
            docs[str(path.relative_to(folder))] = {"title": path.stem, "text": text, "metadata": {}}
    if not docs:
        raise DataError(f"Every file in {folder} is empty: add text to them.")
    return docs


def load_hf_corpus(
    name: str,
    split: str = "train",
    text_column: str = "text",
    title_column: str | None = "title",
    id_column: str | None = None,
    **load_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Documents from a Hugging Face dataset (online by name, or a local loader such as 'json' + data_files)."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, split=split, **load_kwargs)
    except (ConnectionError, OSError) as err:
        raise DataError(
            f"Cannot load dataset {name!r} ({type(err).__name__}): connect to the Hugging Face Hub, or export it "
            "to a BEIR folder or a folder of .txt files and load that instead."
        ) from None
    if text_column not in dataset.column_names:
        raise DataError(
            f"Dataset {name!r} has no column {text_column!r} (it has {', '.join(dataset.column_names)}): "
            "pass text_column=..."
        )
    docs = {}
    for n, row in enumerate(dataset):
        doc_id = str(row[id_column]) if id_column else str(n)
        title = str(row[title_column]) if title_column and title_column in row else ""
        if doc_id in docs:
            raise DataError(f"Dataset {name!r} repeats id {doc_id!r} in column {id_column!r}: pick a unique column.")
        if str(row[text_column]).strip():
            docs[doc_id] = {"title": title, "text": str(row[text_column]), "metadata": {}}
    return docs


# ---------------------------------------------------------------- the course data set


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def course_data(tokenizer: Any, mode: str | None = None, rebuild: bool = False) -> Beir:
    """The course's BEIR data for a mode: built once from data/covid-qa (cached), then sliced for fast mode."""
    source = config.data_dir() / "covid-qa" / COVIDQA_FILE
    key = _fingerprint(
        BUILD_VERSION,
        source.stat().st_size,
        config.CHUNK_TOKENS,
        config.CHUNK_OVERLAP,
        config.SPLIT_FRACTIONS,
        config.SEED,
        type(tokenizer).__name__,
        len(tokenizer),
    )
    folder = config.repo_root() / "artifacts" / "beir" / f"covid-qa-{key}"
    if rebuild or not (folder / "stats.json").exists():
        beir, stats = covidqa_beir(load_covidqa(source), tokenizer)
        write_beir(beir, folder)
        (folder / "stats.json").write_text(json.dumps(stats, indent=2))
    return slice_for_mode(load_beir(folder), mode)


def course_stats(beir_folder: Path | None = None) -> dict[str, Any]:
    """The statistics written beside the built course data (counts per split, label handling)."""
    folders = sorted(
        (config.repo_root() / "artifacts" / "beir").glob("covid-qa-*/stats.json"), key=lambda p: p.stat().st_mtime
    )  # the most recent build
    path = beir_folder / "stats.json" if beir_folder else (folders[-1] if folders else None)
    if path is None:
        raise DataError("The course data is not built yet: call course_data(tokenizer) first.")
    return read_json(path)


def doc_split(beir: Beir) -> dict[str, str]:
    """Article id → split, read back from the qrels (every question's article is in exactly one split)."""
    split_of = {}
    for split, qrels in beir.qrels.items():
        for qid in qrels:
            split_of[beir.query_meta[qid]["doc_id"]] = split
    return split_of


def slice_for_mode(beir: Beir, mode: str | None = None, seed: int = config.SEED) -> Beir:
    """Fast mode keeps a seeded share of the articles (same in every split) and caps the test questions."""
    s = config.settings(mode)
    if s.max_articles is None and s.max_test_queries is None:
        return beir
    rng = random.Random(seed)
    split_of = doc_split(beir)
    docs = {c["metadata"]["doc_id"] for c in beir.corpus.values()}
    keep = docs
    if s.max_articles is not None and s.max_articles < len(docs):
        share = s.max_articles / len(docs)
        keep = set()
        for split in SPLITS:
            in_split = sorted(d for d in docs if split_of.get(d, "train") == split)
            keep |= set(rng.sample(in_split, min(len(in_split), max(1, round(share * len(in_split))))))
    corpus = {cid: c for cid, c in beir.corpus.items() if c["metadata"]["doc_id"] in keep}
    qrels = {
        split: {qid: r for qid, r in rels.items() if beir.query_meta[qid]["doc_id"] in keep}
        for split, rels in beir.qrels.items()
    }
    if s.max_test_queries is not None and len(qrels.get("test", {})) > s.max_test_queries:
        chosen = set(rng.sample(sorted(qrels["test"]), s.max_test_queries))
        qrels["test"] = {qid: r for qid, r in qrels["test"].items() if qid in chosen}
    kept_q = {qid for rels in qrels.values() for qid in rels}
    queries = {qid: t for qid, t in beir.queries.items() if qid in kept_q}
    meta = {qid: m for qid, m in beir.query_meta.items() if qid in kept_q}
    return Beir(corpus, queries, qrels, meta)


def split_corpus(beir: Beir, split: str) -> dict[str, dict[str, Any]]:
    """The chunks of the articles in one split (train/dev/test)."""
    split_of = doc_split(beir)
    return {cid: c for cid, c in beir.corpus.items() if split_of.get(c["metadata"]["doc_id"]) == split}


def expert_pairs(beir: Beir, split: str = "train") -> list[dict[str, Any]]:
    """(query, chunk) pairs from the experts' questions of a split: one per relevant chunk, with the answer text."""
    return [
        {"query": beir.queries[qid], "chunk_id": cid, "qid": qid, "answer": beir.query_meta[qid]["answer"]}
        for qid, rels in beir.qrels.get(split, {}).items()
        for cid in rels
    ]


# ---------------------------------------------------------------- a general-domain check set (forgetting)

GENERAL_CHECK = "python-docs-check"  # data/<this>: a BEIR folder built by python_docs_check()


def python_docs_check(max_words: int = 150) -> Beir:
    """Python Language Reference sections (pydoc_data.topics, PSF licence) as a known-item retrieval set.

    Each section is cut into chunks of max_words words with its title removed; the title is the query and the
    section's first chunk is its one relevant document. All other chunks are distractors.
    """
    from pydoc_data.topics import topics

    corpus: dict[str, dict[str, Any]] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for key in sorted(topics):
        lines = topics[key].strip().splitlines()
        title = lines[0].strip()
        body = [line for line in lines[1:] if line.strip() and set(line.strip()) - set("*=-^~")]  # no underlines
        words = " ".join(body).split()
        if len(words) < 20:
            continue
        for i in range(0, len(words), max_words):
            text = " ".join(words[i : i + max_words])
            corpus[f"{key}-{i // max_words}"] = {"title": "", "text": text, "metadata": {}}
        queries[key] = title
        qrels[key] = {f"{key}-0": 1}
    return Beir(corpus, queries, {"test": qrels})


def general_check() -> Beir:
    """The shipped general-domain check set (data/python-docs-check)."""
    return load_beir(config.data_dir() / GENERAL_CHECK)
