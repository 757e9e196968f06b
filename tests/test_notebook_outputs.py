"""Committed notebooks show outputs of their current code: each course notebook was run by the course runner after its
last code change, exercises carry no outputs, copies run elsewhere record their commit, and no output shows a
machine's absolute paths, progress widgets or a figure twice."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from embtune_utils import course

ROOT = Path(__file__).resolve().parents[1]
COURSE = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
SHEETS = sorted((ROOT / "notebooks").glob("exercises/*.ipynb")) + sorted((ROOT / "notebooks").glob("solutions/*.ipynb"))
ELSEWHERE = sorted((ROOT / course.GPU_NOTEBOOKS).glob("*.ipynb"))


def test_there_are_nine_course_notebooks_in_order():
    assert [p.name.split("_")[0] for p in COURSE] == ["01", "02", "03", "04", "05", "06", "06b", "07", "08"]


@pytest.mark.parametrize("path", COURSE, ids=lambda p: str(p.relative_to(ROOT)))
def test_course_notebook_outputs_come_from_its_current_code(path):
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("embtune") or {}
    rerun = f"re-run it: python -m embtune_utils.course run notebooks/{path.name}"
    assert meta.get("ok") and meta.get("mode") == "default", f"{path.name} has no passing default-mode run; {rerun}"
    stale = course.stale_cells(nb)
    assert not stale, f"{path.name}: code cells {stale} changed after their outputs were recorded; {rerun}"


@pytest.mark.parametrize("path", SHEETS, ids=lambda p: str(p.relative_to(ROOT)))
def test_exercise_and_solution_notebooks_carry_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    assert not [i for i, c in enumerate(nb.cells) if c.get("outputs")], f"{path}: clear its outputs"


@pytest.mark.parametrize("path", ELSEWHERE, ids=lambda p: str(p.relative_to(ROOT)))
def test_copies_run_elsewhere_record_the_commit_they_ran(path):
    meta = nbformat.read(path, as_version=4).metadata.get("embtune") or {}
    assert meta.get("commit"), f"{path} does not say which commit it ran: run it with the course runner"


@pytest.mark.parametrize("path", COURSE + SHEETS + ELSEWHERE, ids=lambda p: str(p.relative_to(ROOT)))
def test_outputs_show_no_absolute_paths_widgets_or_repeated_figures(path):
    problems = course.output_problems(nbformat.read(path, as_version=4), ROOT)
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def _with_output(*outputs):
    nb = new_notebook(cells=[new_code_cell("x")])
    nb.cells[0].outputs = [nbformat.from_dict(o) for o in outputs]
    return nb


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"output_type": "stream", "name": "stdout", "text": "Loaded from /home/ana/.venv/lib/x\n"}, "absolute path"),
        ({"output_type": "stream", "name": "stdout", "text": "at lib/python3.11/site-packages/m\n"}, "site-packages"),
        ({"output_type": "stream", "name": "stdout", "text": "saved /tmp/abc/model\n"}, "absolute path"),
        (
            {"output_type": "stream", "name": "stderr", "text": "Batches:  50%|#####     | 1/2 [00:01<00:01]\n"},
            "progress",
        ),
        (
            {"output_type": "display_data", "metadata": {}, "data": {course._WIDGET: {"model_id": "a"}}},
            "progress widget",
        ),
        ({"output_type": "stream", "name": "stderr", "text": "DEBUG:bm25s:Building index from IDs\n"}, "DEBUG log"),
    ],
)
def test_the_output_check_catches_each_kind_of_problem(output, problem):
    assert any(problem in p for p in course.output_problems(_with_output(output), Path("/nowhere")))


def test_the_output_check_catches_a_figure_shown_twice_and_the_repo_folder():
    image = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}}
    assert course.output_problems(_with_output(image, image), Path("/nowhere")) == [
        "cell 0: the figure of cell 0 shown again"
    ]
    text = {"output_type": "stream", "name": "stdout", "text": "model at /srv/clone/artifacts/m\n"}
    assert "(/srv/clone)" in course.output_problems(_with_output(text), Path("/srv/clone"))[0]
    fine = {"output_type": "stream", "name": "stdout", "text": "saved results/default/x.json, <packages>/m, 3.5 it\n"}
    assert course.output_problems(_with_output(fine), Path("/nowhere")) == []


def test_stale_cells_names_the_changed_code_cells_only():
    nb = new_notebook(cells=[new_code_cell("a = 1"), nbformat.v4.new_markdown_cell("text"), new_code_cell("b = 2")])
    assert course.stale_cells(nb) == [0, 2]  # never run
    nb.metadata["embtune"] = {"code_sha256": course.cell_hashes(nb)}
    nb.cells[1].source = "other text"  # markdown is not hashed: the runner writes measured numbers into it
    assert course.stale_cells(nb) == []
    nb.cells[2].source = "b = 3"
    assert course.stale_cells(nb) == [2]
