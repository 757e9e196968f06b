"""Run the course's notebooks in order (`make course`) and write the README's timing and results tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
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
README_RERANK = ("<!-- rerank:start -->", "<!-- rerank:end -->")
GPU_NOTEBOOKS = Path("results/gpu/full_course")  # the notebooks as executed in full mode on a GPU (device run)


FAST_RSS_LIMIT_MB = 2048  # a Binder pod (mybinder.org gives 1-2 GB): every notebook must fit it in fast mode
QUIET_ENV = {  # no progress bars or widgets in committed outputs: the kernel inherits these
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}
# Run first in every kernel (and removed again): progress bars off for good. TQDM_DISABLE reaches tqdm's console bars,
# but tqdm.autonotebook picks Jupyter widgets, which force disable=False; in a run's saved outputs a widget is frozen
# at 0%. This makes every later `from tqdm.autonotebook import tqdm` the console class, which honours TQDM_DISABLE.
_QUIET_SETUP = """import tqdm.autonotebook as _tqdm_auto, tqdm.std as _tqdm_std
_tqdm_auto.tqdm = _tqdm_std.tqdm"""
# Run before the notebook's cells (and removed again): where the time goes, by what the library is doing. Each
# category counts its own time only (an evaluation inside trainer.train() is evaluation, not training); encoding
# inside an evaluation counts as evaluation. "other" is the rest of the wall time.
PROFILE = True  # tests of the runner itself turn it off: it imports sentence-transformers in every kernel
PROFILE_CATEGORIES = ("loading", "training", "evaluation", "encoding")
_PROFILE_SETUP = """import functools as _ft, time as _time
import sentence_transformers as _st, transformers as _tf
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as _IRE
_profile = {k: 0.0 for k in ("loading", "training", "evaluation", "encoding")}
_frames = []
def _timed(category, fn):
    @_ft.wraps(fn)
    def wrapper(*args, **kwargs):
        if category == "encoding" and any(f[0] == "evaluation" for f in _frames):
            return fn(*args, **kwargs)  # part of the evaluation around it
        _frames.append([category, 0.0])
        start = _time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = _time.perf_counter() - start
            _, inner = _frames.pop()
            _profile[category] += spent - inner
            if _frames:
                _frames[-1][1] += spent
    return wrapper
_st.SentenceTransformer.__init__ = _timed("loading", _st.SentenceTransformer.__init__)
_st.SentenceTransformer.encode = _timed("encoding", _st.SentenceTransformer.encode)
_tf.Trainer.train = _timed("training", _tf.Trainer.train)
_IRE.__call__ = _timed("evaluation", _IRE.__call__)
try:
    from embtune_utils import models as _em, train as _et
    _em.load_model = _timed("loading", _em.load_model)
    _et.dev_scores = _timed("evaluation", _et.dev_scores)
except ImportError:
    pass"""
# Run after the notebook's cells in its kernel (and removed again): the kernel's own peak resident memory, and on CUDA
# the peak memory torch allocated, including peaks before a notebook's own reset_peak_memory_stats() calls.
_PROBE_SETUP = """import torch as _torch
_torch.cuda._embtune_peak = 0
_reset = _torch.cuda.reset_peak_memory_stats
def _keep_peak_then_reset(*args, **kwargs):
    _torch.cuda._embtune_peak = max(_torch.cuda._embtune_peak, _torch.cuda.max_memory_allocated())
    return _reset(*args, **kwargs)
_torch.cuda.reset_peak_memory_stats = _keep_peak_then_reset"""
_PROBE = """import json as _json, sys as _sys
from embtune_utils.config import peak_rss_mb as _peak_rss_mb
_probe = {"peak_rss_mb": round(_peak_rss_mb() or 0, 1)}
if "_profile" in globals():
    _probe["profile"] = {k: round(v, 1) for k, v in _profile.items()}
_t = _sys.modules.get("torch")
if _t is not None and _t.cuda.is_available():
    _peak = max(getattr(_t.cuda, "_embtune_peak", 0), _t.cuda.max_memory_allocated())
    _probe["cuda_peak_allocated_mb"] = round(_peak / 2**20, 1)
print("EMBTUNE_PROBE" + _json.dumps(_probe))"""


def _with_other(profile: dict[str, float], wall_s: float) -> dict[str, float]:
    """The profile's categories plus "other": the wall time none of them accounts for."""
    return profile | {"other": round(max(0.0, wall_s - sum(profile.values())), 1)}


def cell_hashes(nb: object) -> list[str]:
    """A short SHA-256 of each code cell's source, in order: what a recorded run executed (markdown is not hashed)."""
    import hashlib

    return [hashlib.sha256(c.source.encode()).hexdigest()[:16] for c in nb.cells if c.cell_type == "code"]


# What committed outputs must not contain: absolute paths of the machine that ran them, and progress widgets or bars.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>-])/(?:home|root|tmp|work|Users|opt|usr|var|mnt|srv|content|private)/[\w.-]")
_PROGRESS = re.compile(r"\d+%\|[^\n]*\|\s*\d+/\d+|\d+(?:\.\d+)?\s*(?:it|s)/s\]")
_WIDGET = "application/vnd.jupyter.widget-view+json"


def _output_texts(output: dict) -> list[str]:
    """Every text an output shows: stream text, plain/HTML/Markdown data, an error's traceback."""
    texts = [output.get("text", "")] if output.get("output_type") == "stream" else []
    data = output.get("data", {})
    texts += [data[k] if isinstance(data[k], str) else "".join(data[k]) for k in ("text/plain", "text/html",
              "text/markdown") if k in data]  # fmt: skip
    return texts + list(output.get("traceback", []))


_DEBUG_LOG = re.compile(r"^DEBUG:[\w.]+:", re.MULTILINE)  # logging's default format at DEBUG level


def output_problems(nb: object, repo: Path | None = None) -> list[str]:
    """What is wrong with a notebook's committed outputs: absolute paths, site-packages, progress widgets or bars,
    DEBUG log lines, widget state, and figures shown twice; one line each, naming the cell."""
    import hashlib

    repo_text = str(repo or config.repo_root())
    problems = ["widget state in the notebook's metadata"] if "widgets" in nb.metadata else []
    seen: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if _WIDGET in output.get("data", {}):
                problems.append(f"cell {index}: a progress widget")
            for text in _output_texts(output):
                if repo_text in text or "site-packages" in text or _ABSOLUTE_PATH.search(text):
                    where = repo_text if repo_text in text else "site-packages" if "site-packages" in text else "/…/"
                    problems.append(f"cell {index}: an absolute path ({where}) in its output")
                if _PROGRESS.search(text):
                    problems.append(f"cell {index}: a progress bar in its output")
                if _DEBUG_LOG.search(text):
                    problems.append(f"cell {index}: a library's DEBUG log line in its output")
            image = output.get("data", {}).get("image/png")
            if image:
                key = hashlib.sha256("".join(image).encode()).hexdigest()
                if key in seen:
                    problems.append(f"cell {index}: the figure of cell {seen[key]} shown again")
                seen.setdefault(key, index)
    return sorted(set(problems), key=problems.index)


def stale_cells(nb: object) -> list[int]:
    """Indices of code cells whose source changed since the notebook's outputs were recorded (all, if never run)."""
    recorded = (nb.metadata.get("embtune") or {}).get("code_sha256")
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if recorded is None:
        return code
    now = cell_hashes(nb)
    if len(now) != len(recorded):
        return code
    return [i for i, a, b in zip(code, now, recorded) if a != b]


def git_commit() -> str:
    """The commit the course folder is at ('+changes' when the package differs from it), or 'unknown'. Notebooks are
    not compared: a run rewrites their outputs, and their code is pinned by the per-cell hashes instead."""
    root = config.repo_root()
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "embtune_utils"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip()[:12] + ("+changes" if dirty.stdout.strip() else "")


def _client_class() -> type:
    """An nbclient NotebookClient that also runs the memory probe in the notebook's kernel after its cells."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.util import ensure_async, run_sync

    class ProbingClient(NotebookClient):
        probe: dict[str, float] = {}

        async def async_execute(self, reset_kc: bool = False, **kwargs: object) -> object:
            self.reset_execution_trackers()
            async with self.async_setup_kernel(**kwargs):
                info = await self.async_wait_for_reply(await ensure_async(self.kc.kernel_info()))
                if info is not None and "language_info" in info["content"]:
                    self.nb.metadata["language_info"] = info["content"]["language_info"]
                await self._hidden(_QUIET_SETUP)
                if PROFILE:
                    await self._hidden(_PROFILE_SETUP)
                if config.detect_device() == "cuda":
                    await self._hidden(_PROBE_SETUP)
                self.code_cells_executed = 0  # the notebook's own cells keep their execution counts
                for index, cell in enumerate(self.nb.cells):
                    await self.async_execute_cell(cell, index, execution_count=self.code_cells_executed + 1)
                text = await self._hidden(_PROBE)
                if "EMBTUNE_PROBE" in text:
                    self.probe = json.loads(text.split("EMBTUNE_PROBE", 1)[1].splitlines()[0])
            return self.nb

        async def _hidden(self, source: str) -> str:
            """Run a cell that is not the notebook's (appended, executed, removed again); its stdout."""
            cell = nbformat.v4.new_code_cell(source)
            self.nb.cells.append(cell)
            try:
                await self.async_execute_cell(cell, len(self.nb.cells) - 1, execution_count=0)
            finally:
                self.nb.cells.remove(cell)
            return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")

        execute = run_sync(async_execute)

    return ProbingClient


def run_notebook(path: Path, mode: str, timeout_s: int = 3600) -> tuple[bool, float, str]:
    """Execute one notebook in place (outputs written back) in `mode`; returns (ok, seconds, error line).

    The notebook's metadata records the run: mode, wall time, peak memory of its kernel, machine, the commit, and a
    hash of every code cell (tests/test_notebook_outputs.py fails when code changed after its outputs were made)."""
    import nbformat
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    os.environ["EMBTUNE_MODE"] = mode  # the kernel inherits it
    os.environ.update(QUIET_ENV)
    client = _client_class()(
        nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    start = time.perf_counter()
    error = ""
    with gpu_memory_peak() as peak:
        try:
            client.execute()
        except CellExecutionError as err:
            error = str(err).strip().splitlines()[-1][:200]
    seconds = time.perf_counter() - start
    rss = client.probe.get("peak_rss_mb")
    if not error and mode == "fast" and rss and rss > FAST_RSS_LIMIT_MB:
        error = f"peak RSS {rss:,.0f} MB is over fast mode's {FAST_RSS_LIMIT_MB:,} MB (a Binder pod)"
    info = config.describe()
    nb.metadata.pop("widgets", None)  # widget state is never shown without a live kernel
    nb.metadata["embtune"] = {
        "mode": mode,
        "wall_s": round(seconds, 1),
        "ok": not error,
        "date": date.today().isoformat(),
        "device": info["device"],
        "cpu_count": info["cpu_count"],
        "torch": info["torch"],
        "sentence-transformers": info["sentence-transformers"],
        "precision": info["precision"],
        **{k: info[k] for k in ("gpu_memory_cap", "precision_set_by") if k in info},
        "commit": git_commit(),
        "code_sha256": cell_hashes(nb),
        **({"peak_rss_mb": rss} if rss else {}),
        **({"profile": _with_other(client.probe["profile"], seconds)} if "profile" in client.probe else {}),
        **(
            {"cuda_peak_allocated_mb": client.probe["cuda_peak_allocated_mb"]}
            if "cuda_peak_allocated_mb" in client.probe
            else {}
        ),
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
    results/timings/<mode>.json, beside the timings kept there of notebooks not run now (each entry has its date):
    how fast mode is timed for the workshop guide without touching committed outputs."""
    import tempfile

    import nbformat

    info = config.describe()
    timings = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            copy = Path(shutil.copy(path, Path(tmp) / path.name))
            ok, seconds, error = run_notebook(copy, mode)
            print(status_line(path, ok, seconds, mode, error), flush=True)
            meta = nbformat.read(copy, as_version=4).metadata["embtune"]
            memory = {k: meta[k] for k in ("peak_rss_mb", "cuda_peak_allocated_mb") if k in meta}
            timings[path.name] = {"wall_s": round(seconds, 1), "ok": ok, **memory, "commit": meta["commit"]}
            timings[path.name] |= {"profile": meta["profile"]} if "profile" in meta else {}
            timings[path.name] |= {"error": error} if error else {}
            timings[path.name]["code_sha256"] = meta["code_sha256"]  # which code these times belong to
    path = config.repo_root() / "results" / "timings" / f"{mode}.json"
    kept = json.loads(path.read_text()).get("notebooks", {}) if path.is_file() else {}  # other notebooks' timings
    for entry in timings.values():
        entry["date"] = date.today().isoformat()
    record = {"mode": mode, "date": date.today().isoformat(), "device": info["device"], "cpu_count": info["cpu_count"]}
    record["notebooks"] = dict(sorted((kept | timings).items()))  # this run's timings replace older ones
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


def _mb(value: float | None) -> str:
    """Megabytes as the tables print them (GB from 1,024 MB up), or a dash when not measured."""
    if not value:
        return "–"
    return f"{value / 1024:.1f} GB" if value >= 1024 else f"{value:,.0f} MB"


def times_table(paths: list[Path]) -> str:
    """A Markdown table of each notebook's recorded runs: default mode (its committed outputs) and fast mode
    (`course time`), with wall time and the kernel's peak resident memory, hardware and date."""
    import nbformat

    fast = _fast_timings()
    rows = [
        "| notebook | default: time | default: peak RAM | fast: time | fast: peak RAM | hardware, date | open |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("embtune")
        links = badges(path.name)
        f = fast.get("notebooks", {}).get(path.name)
        fast_cells = f"{f['wall_s'] / 60:.1f} min | {_mb(f.get('peak_rss_mb'))}" if f else "not run yet | –"
        if not meta:
            rows.append(f"| `{path.name}` | not run yet | – | {fast_cells} | | {links} |")
            continue
        where = f"{meta['device']}, {meta['cpu_count']} cores, {meta['date']}"
        if f:
            where += f" (fast: {fast['date']})"
        wall = f"{meta['wall_s'] / 60:.1f} min" + ("" if meta["mode"] == "default" else f" ({meta['mode']} mode)")
        rows.append(f"| `{path.name}` | {wall} | {_mb(meta.get('peak_rss_mb'))} | {fast_cells} | {where} | {links} |")
    return "\n".join(rows)


def _fast_timings() -> dict:
    """results/timings/fast.json (written by `course time --mode fast`), keeping only the notebooks whose timed code
    is their current code (a time measured on older code is not shown); {} when fast mode was not timed."""
    import nbformat

    path = config.repo_root() / "results" / "timings" / "fast.json"
    if not path.is_file():
        return {}
    record = json.loads(path.read_text())
    current = {}
    for name, entry in record.get("notebooks", {}).items():
        notebook = config.repo_root() / "notebooks" / name
        if notebook.is_file() and entry.get("code_sha256") == cell_hashes(nbformat.read(notebook, as_version=4)):
            current[name] = entry
    return record | {"notebooks": current}


def headline(stem: str, mode: str = "default") -> str | None:
    """The headline sentence a notebook saved with its results (results/<mode>/<NN>_*.json), if any."""
    for path in sorted((config.repo_root() / "results" / mode).glob(f"{stem.split('_')[0]}_*.json")):
        text = json.loads(path.read_text())["results"].get("headline")
        if text:
            return text
    return None


PAYOFF = ("<!-- payoff:start -->", "<!-- payoff:end -->")


def payoff_text(path: Path, fast: dict | None = None) -> str:
    """The measured line of a notebook's opening cell: minutes per mode (default CPU, fast, GPU full) and its
    headline number, all read from recorded runs (`fast`: _fast_timings(), read here when not given)."""
    import nbformat

    meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
    parts = []
    if meta.get("mode") == "default":
        parts.append(f"default mode {meta['wall_s'] / 60:.1f} min on {meta['cpu_count']} CPU cores ({meta['date']})")
    fast = (fast if fast is not None else _fast_timings()).get("notebooks", {}).get(path.name)
    if fast:
        parts.append(f"fast mode {fast['wall_s'] / 60:.1f} min")
    gpu = config.repo_root() / GPU_NOTEBOOKS / path.name
    gpu_meta = nbformat.read(gpu, as_version=4).metadata.get("embtune", {}) if gpu.is_file() else {}
    if gpu_meta.get("gpu"):
        parts.append(f"full mode {gpu_meta['wall_s'] / 60:.1f} min on one {gpu_meta['gpu']} ({gpu_meta['date']})")
    text = "**Measured:** " + ("; ".join(parts) if parts else "not run yet") + "."
    if line := headline(path.stem):
        text += f" **Headline (default mode):** {line}"
    return text


def update_payoffs(paths: list[Path]) -> None:
    """Fill each notebook's payoff markers (in its first cells' Markdown) with payoff_text; outputs are untouched."""
    import nbformat

    fast = _fast_timings()  # read once: it reads every notebook to check which timings are current
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        cell = next((c for c in nb.cells if c.cell_type == "markdown" and PAYOFF[0] in c.source), None)
        if cell is None:
            continue
        new = _replace_between(cell.source, PAYOFF, payoff_text(path, fast))
        if new != cell.source:
            cell.source = new
            nbformat.write(nb, path)


def gpu_times_table(paths: list[Path]) -> str:
    """A Markdown table of notebooks run on a GPU (e.g. results/gpu/full_course/): wall time, torch's peak allocated
    memory in the kernel, the whole card's peak (nvidia-smi), precision and any memory cap."""
    import nbformat

    rows = [
        "| notebook | wall time | mode | GPU | precision, cap | torch peak allocated | card peak (nvidia-smi) | date |",
        "|---|---|---|---|---|---|---|---|",
    ]
    total = 0.0
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
        if "gpu" not in meta:
            continue
        total += meta["wall_s"]
        card = f"{meta['gpu_peak_mb'] / 1024:.1f} GiB" if meta.get("gpu_peak_mb") else "not read"
        status = "" if meta["ok"] else " (failed)"
        setting = meta.get("precision", "?") + (f", {meta['gpu_memory_cap']}" if meta.get("gpu_memory_cap") else "")
        rows.append(
            f"| `{path.name}` | {meta['wall_s'] / 60:.1f} min{status} | {meta['mode']} | {meta['gpu']}, "
            f"{meta['cpu_count']} cores | {setting} | {_mb(meta.get('cuda_peak_allocated_mb'))} | {card} "
            f"| {meta['date']} |"
        )
    rows.append(f"| all | {total / 60:.1f} min | | | | | | |")
    return "\n".join(rows) if len(rows) > 3 else "Not measured yet: no notebook there was run on a GPU."


def results_table(mode: str = "default") -> str:
    """A Markdown table of the test metrics saved under results/<mode>/: each retriever from the last notebook that
    scored it (notebook 06 supersedes 01), with the 95% bootstrap interval of NDCG@10 where one was saved."""
    latest: dict[str, tuple[dict[str, float], list[float] | None, str]] = {}
    number: dict[str, int] = {}  # the notebook number that scored each retriever; 06b does not supersede 06
    for path in sorted((config.repo_root() / "results" / mode).glob("*.json")):
        record = json.loads(path.read_text())
        n = int(path.name[:2]) if path.name[:2].isdigit() else 0
        m = record["machine"]
        where = f"{record['name']}, {m.get('gpu', m['device'])} ({m['cpu_count']} cores), {mode} mode, {record['date']}"
        cis = record["results"].get("test_ci", {})
        for name, metrics in record["results"].get("test", {}).items():
            if n > number.get(name, -1):
                latest[name], number[name] = (metrics, cis.get(name, {}).get("ndcg@10"), where), n
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


def _budget_text(budget: dict) -> str:
    """A reranker table's training budget in words."""
    questions = "every training question" if budget["questions"] is None else f"{budget['questions']} questions"
    return (f"{questions}, {budget['epochs']} epoch(s), {budget['negatives']} mined negatives each, "
            f"{budget['max_length']} word pieces, k from {budget['depths']}")  # fmt: skip


def rerank_tables() -> str:
    """Issue 23's reranker table per mode from results/<mode>/reranker_table.json (benchmarks/reranker_table.py),
    full (GPU) first, then default (CPU); each says where, when and at what budget it ran."""
    from embtune_utils import rerank

    parts = []
    for mode in ("full", "default"):
        path = config.repo_root() / "results" / mode / "reranker_table.json"
        if not path.is_file():
            parts.append(f"{mode} mode: not measured yet (`EMBTUNE_MODE={mode} python benchmarks/reranker_table.py`).")
            continue
        record = json.loads(path.read_text())
        m, r = record["machine"], record["results"]
        where = m.get("gpu", m["device"]) + (f", {m['precision']}" if m.get("gpu") else f" ({m['cpu_count']} cores)")
        cap = f", memory capped at {m['gpu_memory_cap']}" if m.get("gpu_memory_cap") else ""
        parts.append(
            f"**{mode} mode**, {where}{cap}, {record['date']}: {_budget_text(r['budget'])}; {r['n_dev_queries']} dev "
            f"and {r['n_test_queries']} test questions; k chosen on dev.\n\n{rerank.table_markdown(r)}"
        )
    return "\n\n".join(parts)


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
        ("a fine-tuned reranker (fast live; the CPU and GPU outputs discussed)", "06b_reranking", "fast", 20),
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
    for name, t in _fast_timings().get("notebooks", {}).items():
        if t["ok"] or _over_memory_only(t):  # a notebook that ran to the end is timed, even if over the RAM limit
            out["fast"][Path(name).stem] = t["wall_s"]
    return out


def _over_memory_only(entry: dict) -> bool:
    """Whether a timed notebook failed only by going over fast mode's memory limit (it ran every cell)."""
    if "error" in entry:
        return entry["error"].startswith("peak RSS")
    return entry.get("peak_rss_mb", 0) > FAST_RSS_LIMIT_MB  # older records: the limit is the only failure with a peak


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


README_HEADLINES = ("<!-- headlines:start -->", "<!-- headlines:end -->")


def headlines_list(mode: str = "default") -> str:
    """One line per notebook: the headline sentence it computed and saved with its results in `mode`."""
    lines = []
    for path in all_notebooks():
        text = headline(path.stem, mode)
        lines.append(f"- **{path.stem}**: " + (text or f"not measured yet in {mode} mode."))
    return "\n".join(lines)


def all_notebooks() -> list[Path]:
    """Every course notebook, in order."""
    return sorted((config.repo_root() / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def update_readme(paths: list[Path] | None = None) -> None:
    """Rewrite the README's tables from the notebooks' metadata and results/: CPU default-mode timings, results and
    deployment, and the GPU full-mode run (notebooks under results/gpu/full_course/, results under results/full/)."""
    root = config.repo_root()
    update_payoffs(all_notebooks())
    readme = root / "README.md"
    text = _replace_between(readme.read_text(), README_TIMES, times_table(paths or all_notebooks()))
    text = _replace_between(text, README_RESULTS, results_table())
    text = _replace_between(text, README_DEPLOY, deployment_table())
    text = _replace_between(text, README_BEYOND, beyond_table())
    text = _replace_between(text, README_RERANK, rerank_tables())
    text = _replace_between(text, README_HEADLINES, headlines_list())
    gpu_notebooks = sorted((root / GPU_NOTEBOOKS).glob("[0-9][0-9]*_*.ipynb"))
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
