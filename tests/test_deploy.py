from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from embtune_utils import cli, config, deploy, evaluate, models

ROOT = config.repo_root()


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_truncate_keeps_a_prefix_at_unit_length():
    x = unit(5, 32)
    t = deploy.truncate(x, 8)
    assert t.shape == (5, 8) and np.allclose(np.linalg.norm(t, axis=1), 1)
    assert np.allclose(t * np.linalg.norm(x[:, :8], axis=1, keepdims=True), x[:, :8], atol=1e-6)
    with pytest.raises(deploy.DeployError, match="pick 1..32"):
        deploy.truncate(x, 64)


def test_int8_round_trip_is_within_one_step_and_clips_outliers():
    docs = unit(200, 16)
    ranges = deploy.int8_ranges(docs)
    codes = deploy.to_int8(docs, ranges)
    assert codes.dtype == np.int8
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(np.abs(deploy.from_int8(codes, ranges) - docs) <= step + 1e-6)
    outlier = ranges[1:2] + 0.5  # above the corpus maximum in every dimension
    codes = deploy.to_int8(outlier, ranges)  # the top code (126 or 127 after float rounding), not a wrap to -128
    assert codes.min() >= 126, "an out-of-range value wrapped around instead of clipping"


def test_binary_packs_eight_dimensions_per_byte():
    x = unit(4, 64)
    packed = deploy.to_binary(x)
    assert packed.shape == (4, 8) and packed.dtype == np.uint8
    assert np.array_equal(np.unpackbits(packed, axis=1).astype(bool), x > 0)
    with pytest.raises(deploy.DeployError, match="divisible by 8"):
        deploy.to_binary(unit(2, 12))


@pytest.mark.parametrize("kind", deploy.KINDS)
def test_every_index_kind_finds_a_document_from_its_own_vector(kind):
    docs = unit(1200, 64, seed=1)
    index = deploy.build_index(docs, kind, rescore=kind in ("int8", "binary", "binary_hnsw", "ivfpq"), nprobe=8)
    scores, idx = index.search(docs[:50], k=5)
    assert idx.shape == (50, 5) and np.all(np.diff(scores, axis=1) <= 1e-6), "results are not sorted best first"
    assert np.mean(idx[:, 0] == np.arange(50)) >= 0.9, f"{kind}: a document is not its own nearest neighbour"
    assert index.nbytes() > 0
    assert index.score_name() == "cosine"  # every index here is float or rescored
    assert deploy.build_index(docs, "binary").score_name() == "minus Hamming distance"


def test_binary_index_is_32x_smaller_and_rescoring_recovers_exact_neighbours():
    docs, queries = unit(3000, 128, seed=2), unit(100, 128, seed=3)
    exact = deploy.build_index(docs).search(queries, 10)[1]
    flat_bytes = deploy.build_index(docs).nbytes()
    plain, rescored = deploy.build_index(docs, "binary"), deploy.build_index(docs, "binary", rescore=True)
    assert 30 < flat_bytes / plain.nbytes() <= 32
    assert rescored.rescore_nbytes() == 3000 * 128  # int8: one byte per dimension

    def recall(index):
        found = index.search(queries, 10)[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])

    assert recall(rescored) > recall(plain) + 0.1


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(deploy.DeployError, match="use one of flat"):
        deploy.build_index(unit(10, 8), "annoy")


def test_pq_bits_follow_faiss_training_rule():
    assert deploy.pq_bits(100_000) == 8 and deploy.pq_bits(3216) == 6 and deploy.pq_bits(1000) == 4
    assert deploy.default_nlist(3216) == 82 and deploy.default_nlist(100) == 4


def test_factory_strings_build_the_kind_they_name():
    import faiss

    assert deploy.factory_string("ivf", 3216, 384) == "IVF82,Flat"
    assert deploy.factory_string("ivfpq", 3216, 384) == "IVF82,PQ48x6"
    assert deploy.factory_string("hnsw", 10, 8, m=16) == "HNSW16,Flat"
    assert deploy.factory_string("binary_hnsw", 10, 8) == "BHNSW32"
    expected = {"flat": "IndexFlat", "ivf": "IndexIVFFlat", "hnsw": "IndexHNSWFlat", "ivfpq": "IndexIVFPQ"}
    expected |= {"int8": "IndexScalarQuantizer", "binary": "IndexBinaryFlat", "binary_hnsw": "IndexBinaryHNSW"}
    for kind, name in expected.items():
        built = deploy.build_index(unit(1200, 64, seed=4), kind, ef_search=48, nprobe=3)
        assert type(built.faiss_index).__name__ == name, kind
        if "hnsw" in kind:
            assert built.faiss_index.hnsw.efSearch == 48
        if kind.startswith("ivf"):
            assert built.faiss_index.nprobe == 3 and built.faiss_index.metric_type == faiss.METRIC_INNER_PRODUCT
    with pytest.raises(deploy.DeployError, match="use one of flat"):
        deploy.factory_string("annoy", 10, 8)


def test_measure_gives_per_query_values_and_their_interval_and_saved_rows_drop_them():
    docs = unit(300, 32, seed=5)
    queries = docs[:40] + 0.05 * unit(40, 32, seed=6)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(40)}
    doc_ids = [f"d{i}" for i in range(300)]
    row = deploy.measure("m", docs, queries, doc_ids, qrels, kind="binary", rescore=True)
    assert row["per_query"].shape == (40,) and row["ndcg@10"] == pytest.approx(row["per_query"].mean())
    lo, hi = row["ndcg@10_ci"]
    assert lo <= row["ndcg@10"] <= hi
    saved = deploy.saved_rows([row])
    assert "per_query" not in saved[0] and "per_query" in row and saved[0]["ndcg@10_ci"] == [lo, hi]
    json.dumps(saved, default=float)  # a few plain numbers per row


def rows() -> list[dict]:
    def row(name, ndcg, size, p95, model="m"):
        speed = {"p50_ms": p95 / 2, "p95_ms": p95, "queries_per_s": 1000 / p95}
        return {"config": name, "model": model, "ndcg@10": ndcg, "index_bytes": size, "rescore_bytes": 0} | speed

    return [row("flat", 0.50, 1000, 1.0), row("int8", 0.499, 250, 1.5), row("binary", 0.45, 31, 0.5),
            row("hnsw", 0.49, 1200, 0.2), row("bad", 0.40, 2000, 2.0)]  # fmt: skip


def test_table_pareto_front_and_recommendation():
    table = deploy.finish_table(rows(), "flat", {"m": 12.5})
    assert [round(r["pct_of_ref"], 1) for r in table][:2] == [100.0, 99.8] and table[1]["x_smaller"] == 4
    assert table[0]["encode_per_s"] == 12.5
    assert [r["config"] for r in deploy.pareto_front(table, "index_bytes")] == ["binary", "int8", "flat"]
    assert [r["config"] for r in deploy.pareto_front(table, "p95_ms")] == ["hnsw", "flat"]
    assert deploy.recommend(table)["config"] == "int8"  # smallest index that keeps 99%
    assert deploy.recommend(table, min_pct=90)["config"] == "binary"
    with pytest.raises(deploy.DeployError, match="lower min_pct"):
        deploy.recommend(table, min_pct=101)
    with pytest.raises(deploy.DeployError, match="no row named"):
        deploy.finish_table(rows(), "missing", {})
    assert "binary" in deploy.format_table(table) and deploy.human_bytes(2048) == "2.0 KiB"


CORPUS = {
    f"d{i}": {"title": f"Article {i}", "text": text}
    for i, text in enumerate(
        [
            "The incubation period of MERS-CoV is about five days.",
            "Masks reduce the transmission of respiratory viruses.",
            "Vaccines train the immune system to recognise a pathogen.",
            "Bats are a natural reservoir of many coronaviruses.",
            "Hand washing with soap removes viral particles.",
            "Fever and cough are common symptoms of COVID-19.",
            "PCR tests detect viral RNA in nasal swabs.",
            "Ventilators support patients with severe pneumonia.",
        ]
    )
}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """The bundled base model, saved to a folder as notebook 05 saves the fine-tuned one."""
    folder = tmp_path_factory.mktemp("model") / "finetuned"
    models.load_model(device="cpu", verbose=False).save(str(folder))
    return folder


def test_artifact_round_trip_and_atomic_replace(tmp_path, saved_model):
    model = models.load_model(str(saved_model), device="cpu", verbose=False)
    docs = evaluate.encode(model, [d["text"] for d in CORPUS.values()])
    index = deploy.build_index(docs, "binary", rescore=True)
    folder = deploy.save_artifact(tmp_path / "deploy", saved_model, None, CORPUS, index, {}, {"ndcg@10": 1.0})
    deployed = deploy.load_artifact(folder)
    hits = deployed.search("How long is the incubation period of MERS?", k=3)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["id"] == "d0" and hits[0]["title"] == "Article 0"
    assert hits[0]["score"] >= hits[1]["score"]
    with pytest.raises(deploy.DeployError, match="query is empty"):
        deployed.search("  ")
    # A save that fails half-way (the model folder is gone) leaves the previous artifact whole.
    with pytest.raises(FileNotFoundError):
        deploy.save_artifact(folder, tmp_path / "missing", None, CORPUS, index, {}, {})
    assert deploy.load_artifact(folder).search("bats", k=1)[0]["id"] == "d3"


def test_load_artifact_errors_name_the_problem(tmp_path, saved_model):
    with pytest.raises(deploy.DeployError, match="not a deployment artifact"):
        deploy.load_artifact(tmp_path)
    model = models.load_model(str(saved_model), device="cpu", verbose=False)
    index = deploy.build_index(evaluate.encode(model, [d["text"] for d in CORPUS.values()]))
    folder = deploy.save_artifact(tmp_path / "a", saved_model, None, CORPUS, index, {}, {})
    meta = folder / "index" / "metadata.json"
    lines = (folder / "index" / "chunks.jsonl").read_text().splitlines()
    (folder / "index" / "chunks.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(deploy.DeployError, match="chunks.jsonl does not match the checksum saved with it"):
        deploy.load_artifact(folder)
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "sha256"}))
    with pytest.raises(deploy.DeployError, match="7 chunks but 8 vectors"):  # an artifact saved without checksums
        deploy.load_artifact(folder)
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format": 99}))
    with pytest.raises(deploy.DeployError, match="format 99"):
        deploy.load_artifact(folder)


def test_cli_search_prints_hits_and_user_errors_exit_2(tmp_path, saved_model, capsys):
    model = models.load_model(str(saved_model), device="cpu", verbose=False)
    index = deploy.build_index(evaluate.encode(model, [d["text"] for d in CORPUS.values()]), "int8", rescore=True)
    folder = deploy.save_artifact(tmp_path / "a", saved_model, None, CORPUS, index, {}, {})
    assert cli.main(["search", "Which animals carry coronaviruses?", "-k", "2", "--artifact", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "top 2 of 8 chunks, score = cosine"
    assert out[1].startswith(" 1.") and "[d3] Article 3" in out[1]
    assert cli.main(["search", "x", "--artifact", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("embtune search:") and "not a deployment artifact" in err and "Traceback" not in err
    assert cli.main(["search", "x", "-k", "0", "--artifact", str(folder)]) == 2


def test_onnx_int8_export_loads_by_file_name_keeps_the_embeddings_and_serves_search(tmp_path, saved_model, capsys):
    folder = tmp_path / "m"
    shutil.copytree(saved_model, folder)
    onnx_file = deploy.export_onnx_int8(folder)
    assert onnx_file.parent.name == "onnx" and onnx_file.name.endswith(f"int8_{deploy.onnx_config()}.onnx")
    assert deploy.export_onnx_int8(folder) == onnx_file  # reused, not exported again
    onnx_model = deploy.load_onnx(folder, onnx_file)
    torch_model = models.load_model(str(folder), device="cpu", verbose=False)
    texts = [d["text"] for d in CORPUS.values()]
    cos = np.sum(evaluate.encode(onnx_model, texts) * evaluate.encode(torch_model, texts), axis=1)
    assert cos.min() > 0.95
    assert evaluate.model_fingerprint(onnx_model) != evaluate.model_fingerprint(torch_model)
    index = deploy.build_index(evaluate.encode(onnx_model, texts), "int8", rescore=True)
    artifact = deploy.save_artifact(tmp_path / "a", folder, onnx_file, CORPUS, index, {}, {})  # ONNX-encoder artifact
    served = deploy.load_artifact(artifact)
    assert type(served.model[0].model).__name__ == "OnnxEncoder" and served.metadata["onnx_file"].startswith("onnx/")
    assert cli.main(["search", "Which animals carry coronaviruses?", "-k", "2", "--artifact", str(artifact)]) == 0
    assert "[d3] Article 3" in capsys.readouterr().out.splitlines()[1]  # the same top hit as the torch artifact's
    with pytest.raises(deploy.DeployError, match="export it with"):
        deploy.load_onnx(folder, "onnx/model_wrong_name.onnx")
    with pytest.raises(deploy.DeployError, match="run notebook 05 first"):
        deploy.export_onnx_int8(tmp_path / "empty")


def _save_forever(folder: Path, model: Path, corpus: dict, index: deploy.Index) -> None:
    """Save the same artifact over and over, as a long deployment job would, until killed."""
    for n in range(100_000):
        deploy.save_artifact(folder, model, None, corpus, index, {}, {"n": n})


def test_sigkill_while_saving_never_leaves_a_broken_artifact(tmp_path, saved_model):
    """A process saving artifacts in a loop is SIGKILLed at 8 moments; every load afterwards gets a whole artifact
    (checksums verified, chunks = vectors) or, before the first save finished, a clear DeployError."""
    folder = tmp_path / "deploy"
    corpus = {f"d{i}": {"title": "", "text": f"passage {i}"} for i in range(2000)}
    docs = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    index = deploy.build_index(docs / np.linalg.norm(docs, axis=1, keepdims=True), "int8", rescore=True)
    fork = multiprocessing.get_context("fork")  # the child starts saving at once: no second interpreter to start
    rng = np.random.default_rng(0)
    loaded = 0
    for _ in range(8):
        shutil.rmtree(tmp_path / "deploy.tmp", ignore_errors=True)  # what the last killed save left
        proc = fork.Process(target=_save_forever, args=(folder, saved_model, corpus, index))
        proc.start()
        while not (tmp_path / "deploy.tmp").exists():  # wait for a save to begin
            assert proc.is_alive()
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.8)))  # then kill it somewhere in this save or a later one
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        try:
            deployed = deploy.load_artifact(folder)
        except deploy.DeployError as err:
            assert loaded == 0 and "not a deployment artifact" in str(err)
            continue
        assert len(deployed.chunks) == deployed.index.ntotal == 2000
        loaded += 1
    assert loaded >= 4


@pytest.mark.parametrize("served", ["hybrid", "hybrid weighted"])
def test_hybrid_artifact_serves_the_fused_run_it_was_measured_with(tmp_path, saved_model, served, capsys):
    model = models.load_model(str(saved_model), device="cpu", verbose=False)
    docs = evaluate.encode(model, [d["text"] for d in CORPUS.values()])
    index = deploy.build_index(docs, "int8", rescore=True)
    weight = 0.3 if served == "hybrid weighted" else None
    folder = deploy.save_artifact(tmp_path / "a", saved_model, None, CORPUS, index, {}, {}, served, weight)
    deployed = deploy.load_artifact(folder)
    assert deployed.served == served and (folder / "index" / "bm25").is_dir()
    queries = {"q0": "How long is the incubation period of MERS?", "q1": "Which animals carry coronaviruses?"}
    bm25 = evaluate.bm25_index(CORPUS)
    expected = deploy.served_run(
        served, index, bm25, list(CORPUS), queries, evaluate.encode(model, list(queries.values())), weight
    )
    served_run = deployed.run(queries)  # the measured pipeline is the served one: same ids, same scores
    assert {q: [d for d, _ in r] for q, r in served_run.items()} == {q: [d for d, _ in r] for q, r in expected.items()}
    assert np.allclose([s for r in served_run.values() for _, s in r], [s for r in expected.values() for _, s in r])
    assert [h["id"] for h in deployed.search(queries["q1"], k=2)] == [d for d, _ in expected["q1"][:2]]
    qrels = {"q0": {"d0": 1}, "q1": {"d3": 1}}
    row = deploy.measure("finetuned", docs, evaluate.encode(model, list(queries.values())), list(CORPUS), qrels)
    emb = evaluate.encode(model, list(queries.values()))
    hybrid = deploy.measure_hybrid(served, row, docs, bm25, queries, emb, qrels, weight)
    assert hybrid["index_bytes"] > row["index_bytes"] and hybrid["p50_ms"] > 0 and "+ BM25" in hybrid["config"]
    assert cli.main(["search", "bats", "--artifact", str(folder), "-k", "1"]) == 0
    assert "[d3]" in capsys.readouterr().out
    bm25_file = next((folder / "index" / "bm25").iterdir())
    bm25_file.write_bytes(bm25_file.read_bytes() + b" ")
    with pytest.raises(deploy.DeployError, match="does not match the checksum"):
        deploy.load_artifact(folder)


def test_bm25_artifact_needs_no_model(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    deploy.save_index(tmp_path / "run", CORPUS, None, {}, {"config": "bm25"}, served="bm25")
    deployed = deploy.load_artifact(tmp_path / "run")
    assert deployed.model is None and deployed.index is None and deployed.served == "bm25"
    assert deployed.search("soap hand washing", k=1)[0]["id"] == "d4"
    assert cli.main(["search", "PCR nasal swabs", "--artifact", str(tmp_path / "run"), "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "score = BM25" in out and "[d6]" in out
    with pytest.raises(deploy.DeployError, match="needs"):
        deploy.save_index(tmp_path / "run", CORPUS, None, {}, {}, served="hybrid")


def test_notebook_07s_onnx_cell_writes_what_export_onnx_int8_writes(tmp_path, saved_model):
    cells = json.loads((ROOT / "notebooks" / "07_quantized_deployment.ipynb").read_text(encoding="utf-8"))["cells"]
    (source,) = ["".join(c["source"]) for c in cells if "recipe" in c.get("metadata", {}).get("tags", [])]
    assert "torch.onnx.export(" in source and "quantize_dynamic(" in source
    page, package = tmp_path / "page", tmp_path / "package"
    shutil.copytree(saved_model, page)
    shutil.copytree(saved_model, package)
    exec(source, {"train": SimpleNamespace(finetuned_path=lambda: page), "deploy": deploy, "config": config})
    texts = [d["text"] for d in CORPUS.values()]
    on_page = evaluate.encode(deploy.load_onnx(page, deploy.onnx_int8_file(page)), texts)
    from_package = evaluate.encode(deploy.load_onnx(package, deploy.export_onnx_int8(package)), texts)
    np.testing.assert_allclose(on_page, from_package, atol=1e-5)
