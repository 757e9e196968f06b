"""Each notebook's results on two stacks, from the results files the course runner wrote: the headline of each
notebook and every numeric result that moved, old (a git revision's results/<mode>/) against new (the working tree).

Usage: `.venv/bin/python benchmarks/compare_stacks.py OLD_REVISION [--mode default]` prints a markdown report;
`--times` prints each notebook's recorded wall time and profile on both stacks instead.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from typing import Any

from embtune_utils import config

PROFILE = ("encoding", "training", "evaluation")
TIMING = {"date", "machine", "seconds", "s", "ms", "peak", "mb", "wall", "time", "latency", "memory", "rss"}
ESTIMATE = re.compile(r"(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a results file as dotted key -> value (lists by position)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def timing(key: str) -> bool:
    """Keys that hold time, speed or memory: machine-dependent, left out of the comparison."""
    return any(token in TIMING for token in re.split(r"[^a-z0-9]+", key.lower()))


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def old_results(revision: str, mode: str) -> dict[str, dict]:
    """The results files of `revision`, by file name."""
    folder = f"results/{mode}"
    names = [n for n in _git("ls-tree", "--name-only", f"{revision}:{folder}").split() if n.endswith(".json")]
    return {name: json.loads(_git("show", f"{revision}:{folder}/{name}")) for name in names}


def describe(results: dict) -> str:
    """A results file's headline and the stack that wrote it."""
    machine = results.get("machine", {})
    stack = f"transformers {machine.get('transformers')}, sentence-transformers {machine.get('sentence-transformers')}"
    return f"{results.get('results', {}).get('headline', '')} ({stack})"


def estimate(headline: str) -> tuple[float, float, float] | None:
    """The first "value [lo, hi]" a headline quotes."""
    match = ESTIMATE.search(headline or "")
    return tuple(float(g) for g in match.groups()) if match else None  # type: ignore[return-value]


def beyond(old: str, new: str) -> str:
    """Whether the new headline's estimate lies outside the old one's 95% interval."""
    a, b = estimate(old), estimate(new)
    if a is None or b is None:
        return "(no interval)"
    return f"yes ({b[0] - a[0]:+.3f})" if not a[1] <= b[0] <= a[2] else f"no ({b[0] - a[0]:+.3f})"


def report(revision: str, mode: str) -> str:
    """The markdown report: a headline table, then per notebook the numeric results that moved."""
    old = old_results(revision, mode)
    new = {p.name: json.loads(p.read_text()) for p in sorted(config.results_dir(mode).glob("*.json"))}
    lines = ["| results file | old stack | new stack | new outside old 95% CI? |", "|---|---|---|---|"]
    for name in sorted(old):
        if name not in new:
            lines.append(f"| {name} | {describe(old[name])} | (not written) | |")
            continue
        headlines = [files[name].get("results", {}).get("headline", "") for files in (old, new)]
        moved = beyond(*headlines)
        lines.append(f"| {name} | {describe(old[name])} | {describe(new[name])} | {moved} |")
    lines.append("")
    for name in sorted(set(old) & set(new)):
        a, b = flatten(old[name].get("results", {})), flatten(new[name].get("results", {}))
        numeric = [
            k
            for k in sorted(set(a) & set(b))
            if not timing(k) and isinstance(a[k], float | int) and not isinstance(a[k], bool)
        ]
        moved = [k for k in numeric if isinstance(b[k], float | int) and abs(float(a[k]) - float(b[k])) > 1e-6]
        lines.append(f"**{name}**: {len(numeric) - len(moved)} of {len(numeric)} numeric results equal (to 1e-6)")
        lines += [f"- `{k}`: {a[k]:.4g} → {b[k]:.4g} ({float(b[k]) - float(a[k]):+.4g})" for k in moved[:40]]
        if len(moved) > 40:
            lines.append(f"- … and {len(moved) - 40} more")
        lines.append("")
    return "\n".join(lines)


def recorded_runs(revision: str | None) -> dict[str, dict]:
    """Each course notebook's run metadata (wall time, profile, peak memory) at `revision`, or in the working tree."""
    root = config.repo_root()
    paths = sorted(p.relative_to(root) for p in (root / "notebooks").glob("0*.ipynb"))
    texts = {p.name: _git("show", f"{revision}:{p}") if revision else (root / p).read_text() for p in paths}
    return {name: json.loads(text)["metadata"].get("embtune", {}) for name, text in texts.items()}


def times_table(revision: str) -> str:
    """Per notebook: wall time and where it went (encoding, training, evaluation) on the old and the new stack."""
    old, new = recorded_runs(revision), recorded_runs(None)
    lines = [
        "| notebook | old wall s | new wall s | new/old | encoding s old → new | training s old → new "
        "| evaluation s old → new | peak MB old → new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in sorted(old):
        a, b = old[name], new.get(name, {})
        if not a.get("wall_s") or not b.get("wall_s"):
            continue
        cells = [f"{a.get('profile', {}).get(k, 0):.0f} → {b.get('profile', {}).get(k, 0):.0f}" for k in PROFILE]
        peaks = f"{a.get('peak_rss_mb', 0):,.0f} → {b.get('peak_rss_mb', 0):,.0f}"
        walls = f"{a['wall_s']:.0f} | {b['wall_s']:.0f} | {b['wall_s'] / a['wall_s']:.2f}"
        lines.append(f"| {name} | {walls} | {' | '.join(cells)} | {peaks} |")
    total = [sum(r.get("wall_s", 0) for r in runs.values()) for runs in (old, new)]
    lines.append(f"| all | {total[0]:.0f} | {total[1]:.0f} | {total[1] / total[0]:.2f} | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision")
    parser.add_argument("--mode", default="default")
    parser.add_argument("--times", action="store_true", help="per-notebook times from the notebooks' metadata instead")
    args = parser.parse_args()
    print(times_table(args.revision) if args.times else report(args.revision, args.mode))


if __name__ == "__main__":
    main()
