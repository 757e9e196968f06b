"""`embtune run` end to end in fast mode: a BEIR folder, a folder of .txt files, a kill mid-training, user errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from embtune_utils import cli, data, pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def beir_folder(tmp_path, tiny_beir):
    """Four real COVID-QA articles as a BEIR folder (train and test qrels by article; no dev: the run carves it)."""
    return data.write_beir(tiny_beir, tmp_path / "beir")


def check_metrics(path: Path, reranked: bool = False) -> dict:
    """metrics.json has the shape other tools read (see the issue and the README)."""
    metrics = json.loads(path.read_text())
    assert set(metrics) == {"test", "ci95", "n_test_queries", "chosen", "dev", "deployed"}
    names = {"bm25", "base", "finetuned", "hybrid", "hybrid weighted"} | (set(pipeline.RERANKED) if reranked else set())
    assert set(metrics["test"]) == names
    assert ("rerank_k" in metrics["dev"]) == reranked
    assert metrics["chosen"] in metrics["test"] and metrics["deployed"]["retriever"] == metrics["chosen"]
    dev = metrics["dev"]["ndcg@10"]
    assert set(dev) == set(metrics["test"]) and pipeline.choose(dev) == metrics["chosen"]  # chosen on dev
    assert 0.0 <= metrics["dev"]["fusion_weight"] <= 1.0 and metrics["dev"]["n_queries"] > 0
    lo, hi = metrics["deployed"]["ci95"]
    assert lo <= metrics["deployed"]["ndcg@10"] <= hi
    for scores in metrics["test"].values():
        assert set(scores) == {"ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert set(metrics["ci95"]) == {"finetuned-base", "finetuned-bm25"}
    assert all(lo <= hi for lo, hi in metrics["ci95"].values())
    assert isinstance(metrics["n_test_queries"], int) and metrics["n_test_queries"] > 0
    return metrics


def test_run_on_a_beir_folder_killed_mid_training_resumes_then_rerun_skips_every_stage(
    beir_folder, tmp_path, capsys, tiny_beir
):
    """One end-to-end run, SIGKILLed after its first checkpoint (a crash or a lost machine: no chance to clean up),
    resumed without redoing earlier stages, then run again: nothing is redone."""
    out = tmp_path / "out"
    args = ["run", "--corpus", str(beir_folder), "--out", str(out), "--mode", "fast", "--train-queries", "real"]
    args += ["--rerank", "--epochs", "2"]  # the reranker's stage and candidates too; the sized budget: test_choice.py
    env = os.environ | {"PYTHONPATH": str(ROOT), "EMBTUNE_HOME": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "embtune_utils", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = [json.loads(p.read_text()) for p in (out / "checkpoints").glob("checkpoint-*/trainer_state.json")]
    killed_at = max(s["global_step"] for s in states)
    assert not (out / "stages" / "train.json").exists() and not (out / "metrics.json").exists()

    assert cli.main(args) == 0  # the same command resumes
    printed = capsys.readouterr().out
    for stage in ("load", "queries", "negatives"):
        assert f"[{stage}] done earlier, skipped" in printed, printed
    train = json.loads((out / "stages" / "train.json").read_text())["result"]
    assert train["resumed_from"] and "checkpoint-" in train["resumed_from"]
    assert train["max_steps"] == states[0]["max_steps"] and train["steps"] > killed_at  # the same plan, carried on
    metrics = check_metrics(out / "metrics.json", reranked=True)
    assert (out / "reranker" / "config.json").is_file() and "bm25 + rerank" in (out / "report.md").read_text()
    served = json.loads((out / "index" / "metadata.json").read_text())["retriever"]
    assert (served["rerank"] is not None) == (metrics["chosen"] in pipeline.RERANKED)  # the artifact serves the choice
    assert metrics["n_test_queries"] == len(tiny_beir.qrels["test"])
    report = (out / "report.md").read_text()
    finetuned_row = {"| finetuned |", "| **finetuned** (chosen) |"}  # the chosen row is bold
    assert "labelled (qrels/test.tsv)" in report and (out / "ndcg.png").is_file()
    assert any(line.startswith(tuple(finetuned_row)) for line in report.splitlines()), report
    run = json.loads((out / "run.json").read_text())
    assert list(run["stages"]) == list(pipeline.STAGES) and run["config"]["train_queries"] == "real"
    queries = json.loads((out / "stages" / "queries.json").read_text())["result"]
    assert queries["dev_from"] == "real training queries" and queries["pairs"]["synthetic"] == 0
    assert cli.main(["search", "coronavirus", "--artifact", str(out), "-k", "2"]) == 0
    assert "top 2 of" in capsys.readouterr().out

    assert cli.main(args) == 0  # the same command again: nothing is redone
    printed = capsys.readouterr().out
    assert printed.count("done earlier, skipped") == len(pipeline.STAGES), printed


def test_the_reranker_is_keyed_on_the_training_questions_not_on_training():
    keys = {stage: f"key-{stage}" for stage in pipeline.STAGES}
    assert pipeline.upstream_key("rerank", keys) == "key-queries"  # --epochs etc. do not retrain the reranker
    assert pipeline.upstream_key("evaluate", keys) == "key-train+key-rerank"  # either one re-runs evaluate
    assert pipeline.upstream_key("deploy", keys) == "key-evaluate" and pipeline.upstream_key("load", {}) == ""


def test_a_changed_setting_reruns_only_what_it_affects():
    a = pipeline.RunConfig(corpus="c", out="o")
    b = pipeline.RunConfig(corpus="c", out="o", epochs=3)
    assert a.settings_of("load") == b.settings_of("load") and a.settings_of("queries") == b.settings_of("queries")
    assert a.settings_of("train") != b.settings_of("train")
    c = pipeline.RunConfig(corpus="c", out="o", generator="local")
    assert a.settings_of("queries") != c.settings_of("queries") and a.settings_of("load") == c.settings_of("load")


def sentence_questions(prompt: str) -> list[str]:
    """Three different questions built from three sentences of the passage (a stand-in for an LLM's output)."""
    passage = prompt.split("Passage:")[-1]
    sentences = [s.split() for s in re.split(r"(?<=[.!?])\s+", passage) if len(s.split()) >= 8]
    return [f"What do the authors report about {' '.join(s[2:8])}?" for s in sentences[:3]]


def test_run_on_text_files_with_a_generator(tmp_path, articles, capsys, monkeypatch):
    key = "sk-planted-" + "k3y" * 8  # the key must reach the server and nothing else: no file, no output
    monkeypatch.setenv("OPENAI_API_KEY", key)
    docs = tmp_path / "docs"
    docs.mkdir()
    for article in data.load_covidqa()[:7]:
        (docs / f"{article['doc_id']}.txt").write_text(article["text"][:2500])
    out = tmp_path / "out"
    with FakeOpenAI() as server:
        server.query_fn = sentence_questions
        args = ["run", "--corpus", str(docs), "--out", str(out), "--mode", "fast", "--train-queries", "synthetic"]
        args += ["--generator", "openai-compatible", "--base-url", server.base_url, "--epochs", "1"]
        assert cli.main(args) == 0
    assert set(server.auth_headers) == {f"Bearer {key}"}
    printed = capsys.readouterr()
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) > 10 and not any(key.encode() in p.read_bytes() for p in written)
    assert key not in printed.out + printed.err
    check_metrics(out / "metrics.json")
    assert "generated, from held-out documents" in (out / "report.md").read_text()
    records = [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]
    assert records and all(r["generator"] == "openai-compatible" for r in records)
    result = json.loads((out / "stages" / "queries.json").read_text())["result"]
    assert result["pairs"]["synthetic"] > 0 and result["test_queries"] > 0
    assert cli.main(["run", "--corpus", str(docs), "--out", str(out), "--train-queries", "real"]) == 2
    assert "--train-queries real needs labelled training queries" in capsys.readouterr().err


def write_beir_files(folder: Path, corpus: list[str], queries: list[str], qrels: dict[str, str]) -> Path:
    """A hand-made (possibly broken) BEIR folder: raw JSON lines and TSV text."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(line + "\n" for line in corpus))
    (folder / "queries.jsonl").write_text("".join(line + "\n" for line in queries))
    for split, text in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + text)
    return folder


DOC = '{"_id": "%s", "title": "t", "text": "Coronaviruses are enveloped RNA viruses."}'
QUERY = '{"_id": "q1", "text": "What are coronaviruses?"}'


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        (lambda p: p / "nowhere", [], "no such folder"),
        (lambda p: write_beir_files(p / "b", [], [QUERY], {"test": "q1\td1\t1\n"}), [], "is empty"),
        (lambda p: write_beir_files(p / "b", [DOC % "d1", DOC % "d1"], [QUERY], {}), [], "duplicate _id"),
        (lambda p: write_beir_files(p / "b", [DOC % "d1"], [QUERY], {"test": "q1\td9\t1\n"}), [], "d9"),
        (lambda p: write_beir_files(p / "b", [DOC % "d1"], [QUERY], {}), [], "test.tsv is missing or empty"),
        (
            lambda p: write_beir_files(p / "b", [DOC % "d1"], [QUERY], {"test": "q1\td1\t1\n"}),
            ["--train-queries", "real"],
            "--train-queries real needs",
        ),
        (lambda p: write_beir_files(p / "b", [DOC % "d1"], [QUERY], {}), ["--epochs", "0"], "--epochs 0"),
        (lambda p: p, ["--base-model", "nobody/no-such-model"], "Cannot load model 'nobody/no-such-model'"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, setup, flags, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = setup(tmp_path)
    assert cli.main(["run", "--corpus", str(corpus), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embtune run:") and message in err and "\n" not in err and "Traceback" not in err


def test_bad_flag_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--corpus", "c", "--out", "o", "--mode", "turbo"])
    assert exit_info.value.code == 2 and "invalid choice: 'turbo'" in capsys.readouterr().err
