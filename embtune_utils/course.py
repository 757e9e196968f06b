"""Run the course's notebooks in order (`make course`) and write the README's timing and results tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

from embtune_utils import config, deploy

README_TIMES = ("<!-- times:start -->", "<!-- times:end -->")
README_RESULTS = ("<!-- results:start -->", "<!-- results:end -->")
README_DEPLOY = ("<!-- deploy:start -->", "<!-- deploy:end -->")
README_GPU_TIMES = ("<!-- gpu-times:start -->", "<!-- gpu-times:end -->")
README_BEYOND = ("<!-- beyond:start -->", "<!-- beyond:end -->")
README_GPU_RESULTS = ("<!-- gpu-results:start -->", "<!-- gpu-results:end -->")
README_WORKSHOP_TIMES = ("<!-- workshop-times:start -->", "<!-- workshop-times:end -->")
README_AGENDAS = ("<!-- agendas:start -->", "<!-- agendas:end -->")
GPU_NOTEBOOKS = Path("results/gpu/full_course")  # the notebooks as executed in full mode on a GPU (device run)


def run_notebook(path: Path, mode: str, timeout_s: int = 3600) -> tuple[bool, float, str]:
    """Execute one notebook in place (outputs written back) in `mode`; returns (ok, seconds, error line)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    os.environ["EMBTUNE_MODE"] = mode  # the kernel inherits it
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": path.parent}})
    start = time.perf_counter()
    error = ""
    with gpu_memory_peak() as peak:
        try:
            client.execute()
        except CellExecutionError as err:
            error = str(err).strip().splitlines()[-1][:200]
    seconds = time.perf_counter() - start
    info = config.describe()
    nb.metadata["embtune"] = {
        "mode": mode,
        "wall_s": round(seconds, 1),
        "ok": not error,
        "date": date.today().isoformat(),
        "device": info["device"],
        "cpu_count": info["cpu_count"],
        "torch": info["torch"],
        "sentence-transformers": info["sentence-transformers"],
        **({"gpu": info["gpu"], "gpu_peak_mb": peak["mb"]} if "gpu" in info else {}),
    }
    nbformat.write(nb, path)
    return not error, seconds, error


@contextlib.contextmanager
def gpu_memory_peak(interval_s: float = 0.5) -> Iterator[dict[str, float | None]]:
    """The most GPU memory in use (MiB, as nvidia-smi reports it: every process, CUDA contexts and allocator caches
    included) while the block runs; {"mb": None} on a machine without nvidia-smi. The kernel is another process,
    so torch's own counters cannot see it from here."""
    peak: dict[str, float | None] = {"mb": None}
    if shutil.which("nvidia-smi") is None:
        yield peak
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            ).stdout.split()
            if out:
                peak["mb"] = max(peak["mb"] or 0.0, max(float(v) for v in out))
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def status_line(path: Path, ok: bool, seconds: float, mode: str, error: str) -> str:
    """One notebook's line in `make course` and `course time` output: status, name, wall time, mode, error."""
    return f"{'ok  ' if ok else 'FAIL'} {path.name:<36} {seconds:7.1f} s  mode={mode}  {error}"


def run_all(paths: list[Path], mode: str) -> int:
    """Run notebooks in order, one status line each; returns the number that failed."""
    failed = 0
    for path in paths:
        ok, seconds, error = run_notebook(path, mode)
        failed += not ok
        print(status_line(path, ok, seconds, mode, error), flush=True)
    return failed


def time_notebooks(paths: list[Path], mode: str) -> Path:
    """Run copies of the notebooks (outputs are not written back) and save their wall times to
    results/timings/<mode>.json: how fast mode is timed for the workshop guide without touching committed outputs."""
    import tempfile

    info = config.describe()
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            copy = Path(shutil.copy(path, Path(tmp) / path.name))
            ok, seconds, error = run_notebook(copy, mode)
            print(status_line(path, ok, seconds, mode, error), flush=True)
            timings[path.name] = {"wall_s": round(seconds, 1), "ok": ok}
    record = {"mode": mode, "date": date.today().isoformat(), "device": info["device"], "cpu_count": info["cpu_count"]}
    record["notebooks"] = timings
    path = config.repo_root() / "results" / "timings" / f"{mode}.json"
    return config.write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def _replace_between(text: str, markers: tuple[str, str], body: str) -> str:
    start, end = markers
    if start not in text or end not in text:
        raise ValueError(f"README lacks the markers {start} … {end}: add them where the table belongs.")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"


def badges(name: str) -> str:
    """Colab and Binder badges (Markdown) for one notebook of the course."""
    colab = f"https://colab.research.google.com/github/{config.GITHUB_REPO}/blob/main/notebooks/{name}"
    binder = f"https://mybinder.org/v2/gh/{config.GITHUB_REPO}/main?labpath=notebooks%2F{name}"
    return (
        f"[![Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
        f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder})"
    )


def times_table(paths: list[Path]) -> str:
    """A Markdown table of each notebook's last recorded run (mode, wall time, hardware, date)."""
    import nbformat

    rows = ["| notebook | wall time | mode | hardware | date | open |", "|---|---|---|---|---|---|"]
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("embtune")
        links = badges(path.name)
        if not meta:
            rows.append(f"| `{path.name}` | not run yet | | | | {links} |")
            continue
        hardware = f"{meta['device']}, {meta['cpu_count']} cores"
        wall = f"{meta['wall_s'] / 60:.1f} min"
        rows.append(f"| `{path.name}` | {wall} | {meta['mode']} | {hardware} | {meta['date']} | {links} |")
    return "\n".join(rows)


def gpu_times_table(paths: list[Path]) -> str:
    """A Markdown table of notebooks run on a GPU (e.g. results/gpu/full_course/): wall time and peak GPU memory."""
    import nbformat

    rows = ["| notebook | wall time | mode | GPU | peak GPU memory | date |", "|---|---|---|---|---|---|"]
    total = 0.0
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
        if "gpu" not in meta:
            continue
        total += meta["wall_s"]
        peak = f"{meta['gpu_peak_mb'] / 1024:.1f} GiB" if meta.get("gpu_peak_mb") else "not read"
        status = "" if meta["ok"] else " (failed)"
        rows.append(
            f"| `{path.name}` | {meta['wall_s'] / 60:.1f} min{status} | {meta['mode']} | {meta['gpu']}, "
            f"{meta['cpu_count']} cores | {peak} | {meta['date']} |"
        )
    rows.append(f"| all | {total / 60:.1f} min | | | | |")
    return "\n".join(rows) if len(rows) > 3 else "Not measured yet: no notebook there was run on a GPU."


def results_table(mode: str = "default") -> str:
    """A Markdown table of the test metrics saved under results/<mode>/: each retriever from the last notebook that
    scored it (notebook 06 supersedes 01), with the 95% bootstrap interval of NDCG@10 where one was saved."""
    latest: dict[str, tuple[dict[str, float], list[float] | None, str]] = {}
    for path in sorted((config.repo_root() / "results" / mode).glob("*.json")):
        record = json.loads(path.read_text())
        m = record["machine"]
        where = f"{record['name']}, {m.get('gpu', m['device'])} ({m['cpu_count']} cores), {mode} mode, {record['date']}"
        cis = record["results"].get("test_ci", {})
        for name, metrics in record["results"].get("test", {}).items():
            latest[name] = (metrics, cis.get(name, {}).get("ndcg@10"), where)
    rows = [
        "| retriever | NDCG@10 [95% CI] | MRR@10 | Recall@10 | Recall@100 | where measured |",
        "|---|---|---|---|---|---|",
    ]
    if not latest:
        return f"Not measured yet: no notebook has saved test results in {mode} mode."
    for name, (metrics, ci, where) in latest.items():
        ndcg = f"{metrics['ndcg@10']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        rows.append(
            f"| {name} | {ndcg} | {metrics['mrr@10']:.3f} | {metrics['recall@10']:.3f} | "
            f"{metrics['recall@100']:.3f} | {where} |"
        )
    return "\n".join(rows)


def deployment_table(mode: str = "default") -> str:
    """A Markdown table of notebook 07's deployment configurations from results/<mode>/07_deployment.json."""
    path = config.repo_root() / "results" / mode / "07_deployment.json"
    if not path.is_file():
        return f"Not measured yet: run notebook 07 in {mode} mode."
    record = json.loads(path.read_text())
    m, r = record["machine"], record["results"]
    rows = [
        f"Notebook 07, {m['device']} ({m['cpu_count']} cores), {mode} mode, {record['date']}: "
        f"{r['n_test_queries']} test questions over {r['n_chunks']} chunks; % is of `{r['reference']}`; latency is one "
        "query against the index (query already embedded); encode is the model's passages/s.",
        "",
        "| configuration | NDCG@10 | % | index | x smaller | p50 ms | p95 ms | queries/s | encode/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        rows.append(
            f"| {row['config']} | {row['ndcg@10']:.3f} | {row['pct_of_ref']:.1f} "
            f"| {deploy.human_bytes(row['index_bytes'])} | {row['x_smaller']:.1f} | {row['p50_ms']:.3f} "
            f"| {row['p95_ms']:.3f} | {row['queries_per_s']:.0f} | {row['encode_per_s']:.1f} |"
        )
    pick = r["recommended"]
    rows += ["", f"Recommended by the notebook's rule (>= 99% of the reference, then the smallest index): "
             f"**{pick['quality']['config']}**, NDCG@10 {pick['quality']['ndcg@10']:.3f}."]  # fmt: skip
    return "\n".join(rows)


def beyond_table(mode: str = "default") -> str:
    """Notebook 08's summary (technique, dev NDCG@10, difference to the baseline, time, verdict) from results/."""
    from embtune_utils import beyond

    path = config.repo_root() / "results" / mode / "08_beyond.json"
    if not path.is_file():
        return f"Not measured yet: run notebook 08 in {mode} mode."
    record = json.loads(path.read_text())
    m, r = record["machine"], record["results"]
    head = (
        f"Notebook 08, {m['device']} ({m['cpu_count']} cores), {mode} mode, {record['date']}: {r['pairs_per_run']} "
        f"training rows per run, {r['n_dev_queries']} dev questions; Δ is a paired difference to the baseline run."
    )
    return f"{head}\n\n{beyond.summary_table(r['summary'])}"


# Workshop agendas: (slot, notebook or None, mode it runs in live or None for pre-run outputs, minutes of talk and
# exercises). Run minutes come from the measured timings; talk minutes are the plan.
AGENDAS = {
    "3-hour workshop (laptops, CPU, fast mode live)": [
        ("setup check: `python -m embtune_utils.doctor`", None, None, 10),
        ("RAG basics and metrics", "01_rag_basics", "fast", 20),
        ("synthetic queries", "02_synthetic_data", "fast", 15),
        ("hard negatives", "03_negative_mining", "fast", 15),
        ("break", None, None, 10),
        ("losses", "04_losses", "fast", 15),
        ("training", "05_training", "fast", 20),
        ("evaluation on test", "06_evaluation", "fast", 15),
        ("deployment (walk through the committed outputs)", "07_quantized_deployment", None, 15),
        ("questions, where to go next (notebook 08, `embtune run`)", None, None, 10),
    ],
    "full-day workshop (laptops, CPU; default mode where it fits)": [
        ("setup check: `python -m embtune_utils.doctor`", None, None, 15),
        ("RAG basics and metrics, exercises", "01_rag_basics", "default", 35),
        ("synthetic queries, exercises", "02_synthetic_data", "default", 30),
        ("hard negatives, exercises", "03_negative_mining", "default", 30),
        ("break", None, None, 15),
        ("losses (fast live; the default outputs discussed), exercises", "04_losses", "fast", 35),
        ("lunch", None, None, 60),
        ("training (fast live; the default outputs discussed), exercises", "05_training", "fast", 40),
        ("evaluation on test, exercises", "06_evaluation", "default", 30),
        ("break", None, None, 15),
        ("deployment, exercises", "07_quantized_deployment", "default", 30),
        ("beyond the basics (fast live), exercises", "08_beyond", "fast", 30),
        ("your own corpus with `embtune run`; questions", None, None, 20),
    ],
}


def _timings() -> dict[str, dict[str, float]]:
    """Measured wall seconds per notebook and mode: default from the notebooks' metadata, fast from `course time`."""
    import nbformat

    out: dict[str, dict[str, float]] = {"default": {}, "fast": {}}
    for path in all_notebooks():
        meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
        if meta.get("mode") == "default" and meta.get("ok"):
            out["default"][path.stem] = meta["wall_s"]
    fast = config.repo_root() / "results" / "timings" / "fast.json"
    if fast.is_file():
        for name, t in json.loads(fast.read_text())["notebooks"].items():
            if t["ok"]:
                out["fast"][Path(name).stem] = t["wall_s"]
    return out


def workshop_times_table(timings: dict[str, dict[str, float]]) -> str:
    """Per-notebook measured run time in each mode (CPU, from _timings), for planning what to run live."""
    rows = ["| notebook | default mode (CPU) | fast mode (CPU) |", "|---|---|---|"]
    for path in all_notebooks():
        cells = [
            f"{timings[m][path.stem] / 60:.1f} min" if path.stem in timings[m] else "not measured"
            for m in ("default", "fast")
        ]
        rows.append(f"| `{path.name}` | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def agenda_tables(timings: dict[str, dict[str, float]]) -> str:
    """The workshop agendas with start times: measured run minutes (from _timings, rounded up) plus the planned talk
    minutes."""
    import math

    parts = []
    for title, slots in AGENDAS.items():
        rows = [f"**{title}**", "", "| start | slot | notebook | runs live in | run min | talk + exercises min |"]
        rows.append("|---|---|---|---|---|---|")
        clock, unmeasured = 0, []
        for slot, notebook, mode, talk in slots:
            run = 0
            if notebook and mode:
                seconds = timings[mode].get(notebook)
                if seconds is None:
                    unmeasured.append(f"{notebook} ({mode})")
                run = math.ceil(seconds / 60) if seconds else 0
            name = f"`{notebook}`" if notebook else ""
            live = mode or ("pre-run outputs" if notebook else "")
            rows.append(f"| {clock // 60}:{clock % 60:02d} | {slot} | {name} | {live} | {run or ''} | {talk} |")
            clock += run + talk
        rows.append(f"| {clock // 60}:{clock % 60:02d} | end | | | | |")
        if unmeasured:
            rows += ["", f"Not measured yet, counted as 0 min: {', '.join(unmeasured)}."]
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def all_notebooks() -> list[Path]:
    """Every course notebook, in order."""
    return sorted((config.repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def update_readme(paths: list[Path] | None = None) -> None:
    """Rewrite the README's tables from the notebooks' metadata and results/: CPU default-mode timings, results and
    deployment, and the GPU full-mode run (notebooks under results/gpu/full_course/, results under results/full/)."""
    root = config.repo_root()
    readme = root / "README.md"
    text = _replace_between(readme.read_text(), README_TIMES, times_table(paths or all_notebooks()))
    text = _replace_between(text, README_RESULTS, results_table())
    text = _replace_between(text, README_DEPLOY, deployment_table())
    text = _replace_between(text, README_BEYOND, beyond_table())
    gpu_notebooks = sorted((root / GPU_NOTEBOOKS).glob("[0-9][0-9]_*.ipynb"))
    text = _replace_between(text, README_GPU_TIMES, gpu_times_table(gpu_notebooks))
    text = _replace_between(text, README_GPU_RESULTS, results_table("full"))
    timings = _timings()  # read once for both workshop tables
    text = _replace_between(text, README_WORKSHOP_TIMES, workshop_times_table(timings))
    readme.write_text(_replace_between(text, README_AGENDAS, agenda_tables(timings)))


def main(argv: list[str] | None = None) -> int:
    """`python -m embtune_utils.course run [NOTEBOOK...]`, `... time --mode fast` or `... readme`."""
    parser = argparse.ArgumentParser(prog="python -m embtune_utils.course", description=__doc__)
    parser.add_argument("command", choices=["run", "readme", "time"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--mode", default=None, help="fast, default or full (default: $EMBTUNE_MODE or default)")
    parser.add_argument("--fresh", action="store_true", help="delete artifacts/ first, as on a fresh clone")
    args = parser.parse_intermixed_args(argv)
    paths = args.notebooks or all_notebooks()
    if args.command == "readme":
        update_readme()
        return 0
    mode = config.get_mode(args.mode)
    if args.fresh:  # timings in the README are those of a fresh clone, with no cached embeddings or models
        shutil.rmtree(config.repo_root() / "artifacts", ignore_errors=True)
    if args.command == "time":  # copies of the notebooks: committed outputs stay as they are
        print(time_notebooks(paths, mode))
        update_readme()
        return 0
    failed = run_all(paths, mode)
    if mode != "fast":  # the README shows real-course runs only; its times table lists every notebook
        update_readme()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
