from __future__ import annotations

import json
import re
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from embtune_utils import course


@pytest.fixture(autouse=True)
def no_profile(monkeypatch):
    """The runner's profile imports sentence-transformers in each kernel (seconds); one test turns it back on."""
    monkeypatch.setattr(course, "PROFILE", False)


def make_notebook(path, source):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(
        new_notebook(
            cells=[new_code_cell(source)], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
        ),
        path,
    )
    return path


def test_run_notebook_writes_outputs_and_timing(tmp_path):
    path = make_notebook(tmp_path / "01_ok.ipynb", "import os\nprint(os.environ['EMBTUNE_MODE'])")
    ok, seconds, error = course.run_notebook(path, "fast")
    nb = nbformat.read(path, as_version=4)
    assert ok and not error and seconds > 0, error
    assert nb.cells[0].outputs[0]["text"].strip() == "fast"
    assert nb.metadata["embtune"]["mode"] == "fast" and nb.metadata["embtune"]["ok"]


def test_failing_notebook_is_reported(tmp_path, capsys):
    path = make_notebook(tmp_path / "02_bad.ipynb", "assert 1 == 2, 'claim no longer true'")
    assert course.run_all([path], "fast") == 1
    line = capsys.readouterr().out
    assert line.startswith("FAIL 02_bad.ipynb") and "claim no longer true" in line


def test_times_table_reads_notebook_metadata(tmp_path):
    path = make_notebook(tmp_path / "01_x.ipynb", "1")
    assert "not run yet" in course.times_table([path])
    course.run_notebook(path, "default")
    row = course.times_table([path]).splitlines()[-1]
    assert re.match(r"\| `01_x.ipynb` \| \d+\.\d min \| \d+ MB \| .* \| cpu, \d+ cores, \d{4}-", row), row


def test_run_records_code_hashes_commit_and_the_kernels_peak_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "PROFILE", True)
    path = make_notebook(tmp_path / "01_mem.ipynb", "x = bytearray(200 * 2**20)\nprint(len(x))")
    assert course.run_notebook(path, "default")[0]
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata["embtune"]
    assert meta["code_sha256"] == course.cell_hashes(nb) and len(meta["code_sha256"]) == 1
    assert meta["peak_rss_mb"] > 200  # the kernel's own peak, which held the 200 MB
    assert meta["commit"] and len(nb.cells) == 1  # the probe cells are not left behind
    assert set(meta["profile"]) == {*course.PROFILE_CATEGORIES, "other"}
    assert sum(meta["profile"].values()) == pytest.approx(meta["wall_s"], abs=0.5)
    assert nb.cells[0].execution_count == 1 and nb.cells[0].outputs[0]["text"] == "209715200\n"
    nb.cells[0].source += "\n"
    assert course.cell_hashes(nb) != meta["code_sha256"]


def test_fast_mode_fails_a_notebook_over_the_binder_memory_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(course, "FAST_RSS_LIMIT_MB", 100)
    path = make_notebook(tmp_path / "01_big.ipynb", "x = bytearray(200 * 2**20)")
    ok, _, error = course.run_notebook(path, "fast")
    assert not ok and "over fast mode's 100 MB" in error


def test_payoff_markers_are_filled_from_recorded_runs(home, tmp_path):
    from nbformat.v4 import new_markdown_cell

    from embtune_utils import evaluate

    path = home / "notebooks" / "03_x.ipynb"
    path.parent.mkdir(exist_ok=True)
    make_notebook(path, "1")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, new_markdown_cell(f"# 03\n\n1. plan\n\n{course.PAYOFF[0]}{course.PAYOFF[1]}\n\nmore"))
    nbformat.write(nb, path)
    course.run_notebook(path, "default")
    evaluate.save_results("03_thing", {"headline": "BM25 negatives are 63% same-article"}, mode="default")
    course.update_payoffs([path])
    text = nbformat.read(path, as_version=4).cells[0].source
    assert re.search(r"\*\*Measured:\*\* default mode \d+\.\d min on \d+ CPU cores", text)
    assert "**Headline (default mode):** BM25 negatives are 63% same-article" in text and text.endswith("more")


def test_readme_markers_are_required():
    assert course._replace_between("a <!-- t --> old <!-- /t --> b", ("<!-- t -->", "<!-- /t -->"), "new") == (
        "a <!-- t -->\nnew\n<!-- /t --> b"
    )
    with pytest.raises(ValueError, match="add them"):
        course._replace_between("no markers", ("<!-- t -->", "<!-- /t -->"), "new")


def test_cli_takes_flags_before_notebooks(tmp_path, monkeypatch):
    path = make_notebook(tmp_path / "01_cli.ipynb", "print('hi')")
    monkeypatch.setattr(course, "update_readme", lambda *paths: None)
    assert course.main(["run", "--mode", "fast", str(path)]) == 0
    assert nbformat.read(path, as_version=4).metadata["embtune"]["mode"] == "fast"


def test_results_table_keeps_the_latest_scores_with_intervals(home):
    from embtune_utils import evaluate

    metrics = {"ndcg@10": 0.5, "mrr@10": 0.4, "recall@10": 0.6, "recall@100": 0.9}
    evaluate.save_results("01_rag_basics", {"test": {"bm25": metrics}}, mode="default")
    later = {"test": {"bm25": metrics | {"ndcg@10": 0.6}}, "test_ci": {"bm25": {"ndcg@10": [0.55, 0.65]}}}
    evaluate.save_results("06_evaluation", later, mode="default")
    table = course.results_table("default")
    assert table.count("| bm25 |") == 1 and "0.600 [0.550, 0.650]" in table and "06_evaluation" in table


def test_deployment_table_lists_every_configuration_and_the_pick(home):
    from embtune_utils import evaluate

    assert "Not measured yet" in course.deployment_table("default")
    row = {"config": "finetuned 384d binary + rescore", "ndcg@10": 0.5, "pct_of_ref": 97.0, "index_bytes": 2048}
    row |= {"x_smaller": 32.0, "p50_ms": 0.1, "p95_ms": 0.2, "queries_per_s": 5000.0, "encode_per_s": 17.0}
    results = {"rows": [row], "reference": "finetuned 384d flat", "n_test_queries": 9, "n_chunks": 40}
    results["recommended"] = {"quality": {"config": "onnx-int8 384d int8 + rescore", "ndcg@10": 0.51}}
    evaluate.save_results("07_deployment", results, mode="default")
    table = course.deployment_table("default")
    assert "| finetuned 384d binary + rescore | 0.500 | 97.0 | 2.0 KiB | 32.0 |" in table
    assert "**onnx-int8 384d int8 + rescore**, NDCG@10 0.510" in table and "9 test questions over 40 chunks" in table


def test_gpu_memory_peak_reads_nvidia_smi_and_is_none_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi on this CPU machine
    with course.gpu_memory_peak() as peak:
        pass
    assert peak == {"mb": None}
    fake = tmp_path / "nvidia-smi"  # prints one GPU's memory in use, as `--format=csv,noheader,nounits` does
    fake.write_text("#!/bin/sh\necho 1234\n")
    fake.chmod(0o755)
    with course.gpu_memory_peak(interval_s=0.01) as peak:
        time.sleep(0.1)
    assert peak == {"mb": 1234.0}


def test_beyond_table_comes_from_notebook_08s_results(home):
    from embtune_utils import beyond, evaluate

    assert "Not measured yet" in course.beyond_table("default")
    runs = {"baseline": {"dev": {"a": 0.5, "b": 0.4}, "seconds": 90.0}}
    runs["distillation"] = {"dev": {"a": 0.45, "b": 0.4}, "seconds": 130.0}
    summary = beyond.summarize(runs, "baseline")
    evaluate.save_results("08_beyond", {"summary": summary, "pairs_per_run": 384, "n_dev_queries": 2}, mode="default")
    table = course.beyond_table("default")
    assert "384 training rows per run, 2 dev questions" in table
    assert "| baseline | 0.450 | — | — | 90 | baseline |" in table
    assert "| distillation | 0.425 | -0.025 [" in table and "| 130 | no measurable difference |" in table


def test_time_runs_copies_and_saves_the_timings(home):
    path = make_notebook(home / "01_x.ipynb", "print('timed')")
    saved = course.time_notebooks([path], "fast")
    record = json.loads(saved.read_text())
    assert saved == home / "results" / "timings" / "fast.json"
    assert record["notebooks"]["01_x.ipynb"]["ok"] and record["notebooks"]["01_x.ipynb"]["wall_s"] > 0
    assert record["mode"] == "fast" and record["device"] == "cpu"
    untouched = nbformat.read(path, as_version=4)
    assert not untouched.cells[0].outputs and "embtune" not in untouched.metadata  # the copy ran, not the file
    other = make_notebook(home / "02_y.ipynb", "print('later')")
    record = json.loads(course.time_notebooks([other], "fast").read_text())  # timing one keeps the others' times
    assert set(record["notebooks"]) == {"01_x.ipynb", "02_y.ipynb"} and record["notebooks"]["02_y.ipynb"]["date"]


def test_time_keeps_each_notebooks_time_profile(home, monkeypatch):
    profile = {"loading": 1.0, "training": 2.0, "evaluation": 0.0, "encoding": 3.0, "other": 4.0}

    def fake_run(path, mode):  # what run_notebook leaves in the copy it ran (the real one is tested above)
        nb = nbformat.read(path, as_version=4)
        nb.metadata["embtune"] = {"commit": "abc", "code_sha256": [], "peak_rss_mb": 900.0, "profile": profile}
        nbformat.write(nb, path)
        return True, 10.0, ""

    monkeypatch.setattr(course, "run_notebook", fake_run)
    path = make_notebook(home / "01_x.ipynb", "print('timed')")
    entry = json.loads(course.time_notebooks([path], "fast").read_text())["notebooks"]["01_x.ipynb"]
    assert entry["profile"] == profile and entry["peak_rss_mb"] == 900.0  # benchmarks/course_time.py prints both


def test_agendas_add_measured_run_minutes_to_the_plan(monkeypatch):
    timings = {"default": {"01_a": 61.0}, "fast": {"01_a": 10.0}}
    agenda = [("intro", None, None, 10), ("notebook", "01_a", "default", 20), ("again", "01_a", "fast", 5)]
    agenda.append(("unmeasured", "02_b", "fast", 5))
    monkeypatch.setattr(course, "AGENDAS", {"plan": agenda})
    table = course.agenda_tables(timings)
    assert "| 0:10 | notebook | `01_a` | default | 2 | 20 |" in table  # 61 s rounds up to 2 min
    assert "| 0:32 | again | `01_a` | fast | 1 | 5 |" in table
    assert "| 0:43 | end |" in table and "counted as 0 min: 02_b (fast)" in table


def test_committed_outputs_get_no_progress_widgets_or_bars(tmp_path):
    source = "from tqdm.autonotebook import tqdm\nfor _ in tqdm(range(3), desc='work'):\n    pass\nprint('done')"
    path = make_notebook(tmp_path / "01_bars.ipynb", source)
    assert course.run_notebook(path, "fast")[0]
    nb = nbformat.read(path, as_version=4)
    assert [o.get("text") for o in nb.cells[0].outputs] == ["done\n"] and course.output_problems(nb) == []


def test_fast_times_are_shown_only_for_the_code_they_timed(home):
    path = make_notebook(home / "notebooks" / "01_x.ipynb", "print('timed')")
    course.time_notebooks([path], "fast")
    assert "01_x.ipynb" in course._fast_timings()["notebooks"]
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = "print('changed since')"
    nbformat.write(nb, path)
    assert course._fast_timings()["notebooks"] == {}  # an older time is not shown as this code's


def test_a_notebook_over_the_memory_limit_still_counts_as_timed(monkeypatch, home):
    assert course._over_memory_only({"ok": False, "error": "peak RSS 3,844 MB is over fast mode's 2,048 MB"})
    assert not course._over_memory_only({"ok": False, "error": "AssertionError: claim no longer true"})
    assert course._over_memory_only({"ok": False, "peak_rss_mb": 3844.0})  # a record from before errors were kept
    assert not course._over_memory_only({"ok": False, "peak_rss_mb": 900.0})
