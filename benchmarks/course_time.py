"""Where the course's time goes, per notebook, from the runs the course runner recorded.

`python -m embtune_utils.course run` profiles each notebook in its kernel (model loading, training steps, evaluation,
encoding outside an evaluation, and the rest) and records it, with the wall time and the kernel's peak resident
memory, in the notebook's metadata; `course time` does the same for copies (results/timings/<mode>.json). This script
prints those records as one table per source, each from one run, with the budgets of issue 21 checked:
`make course` (default mode, 2 cores) <= 45 min with no notebook over 10 min; every notebook <= 2 GB in fast mode.

Usage: `.venv/bin/python benchmarks/course_time.py [NOTEBOOK.ipynb ...]` (default: the course's notebooks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from embtune_utils import config, course

NOTEBOOK_LIMIT_MIN, COURSE_LIMIT_MIN, FAST_RSS_LIMIT_MB = 10, 45, course.FAST_RSS_LIMIT_MB


def table(records: dict[str, dict], title: str) -> list[str]:
    """A text table: wall time, each profile category's seconds and share, peak RSS; the total last."""
    cats = [*course.PROFILE_CATEGORIES, "other"]
    lines = [title, f"{'notebook':<32}{'wall':>8}" + "".join(f"{c:>16}" for c in cats) + f"{'peak RSS':>11}"]
    total = 0.0
    for name, meta in records.items():
        wall = meta["wall_s"]
        total += wall
        profile = meta.get("profile") or {}
        shares = "".join(
            f"{profile[c]:>8.0f} s {profile[c] / wall:>4.0%}" if c in profile else f"{'–':>16}" for c in cats
        )
        rss = f"{meta['peak_rss_mb']:>8,.0f} MB" if meta.get("peak_rss_mb") else f"{'–':>11}"
        lines.append(f"{name:<32}{wall / 60:>6.1f} m{shares}{rss}")
    lines.append(f"{'all':<32}{total / 60:>6.1f} m")
    return lines


def checks(default: dict[str, dict], fast: dict[str, dict]) -> list[str]:
    """The issue-21 budgets, each as holds / MISSED with the measured value."""
    out = []
    if default:
        total = sum(m["wall_s"] for m in default.values()) / 60
        longest = max(default, key=lambda k: default[k]["wall_s"])
        out.append(f"{'holds ' if total <= COURSE_LIMIT_MIN else 'MISSED'} default course <= {COURSE_LIMIT_MIN} min: "
                   f"{total:.1f} min")  # fmt: skip
        worst = default[longest]["wall_s"] / 60
        out.append(f"{'holds ' if worst <= NOTEBOOK_LIMIT_MIN else 'MISSED'} every default notebook <= "
                   f"{NOTEBOOK_LIMIT_MIN} min: longest {longest} {worst:.1f} min")  # fmt: skip
    measured = {k: m["peak_rss_mb"] for k, m in fast.items() if m.get("peak_rss_mb")}
    if measured:
        top = max(measured, key=measured.get)
        ok = measured[top] <= FAST_RSS_LIMIT_MB
        out.append(f"{'holds ' if ok else 'MISSED'} every fast notebook <= {FAST_RSS_LIMIT_MB:,} MB peak RSS: "
                   f"largest {top} {measured[top]:,.0f} MB")  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or course.all_notebooks()
    default = {}
    for path in paths:
        meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
        if meta.get("mode") == "default":
            default[path.name] = meta
    where = {m.get("date") for m in default.values()}
    lines = table(
        default, f"default mode, committed outputs ({config.describe()['cpu_count']} cores here; run {where})"
    )
    fast = course._fast_timings()  # only notebooks timed on their current code
    if fast.get("notebooks"):
        lines += [
            "",
            *table(fast["notebooks"], f"fast mode, `course time` on {fast['date']} ({fast['cpu_count']} cores)"),
        ]
    print("\n".join([*lines, "", *checks(default, fast.get("notebooks", {}))]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
