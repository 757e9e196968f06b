"""The exercise checks catch wrong answers, report unsolved ones, and the notebooks match their builder."""

from __future__ import annotations

import importlib.util
import random
import sys

import nbformat
import numpy as np
import pytest

from embtune_utils import config, evaluate, exercises


def _builder():
    path = config.repo_root() / "notebooks" / "build_exercises.py"
    spec = importlib.util.spec_from_file_location("build_exercises", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_unsolved_is_reported_not_failed(capsys):
    def unsolved(*args):
        raise NotImplementedError

    assert exercises.check_recall_at_k(unsolved) is False
    assert "recall@k: not solved yet" in capsys.readouterr().out
    assert exercises.check_overlap_prediction(None, {0: 10, 64: 13}) is False


def test_right_answers_pass(capsys):
    assert exercises.check_recall_at_k(evaluate.recall_at_k)
    assert exercises.check_rrf(lambda runs, k: evaluate.rrf(runs, k))
    assert exercises.check_overlap_prediction("more", {0: 10, 64: 13})
    assert "✓  recall@k: correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("check", "wrong"),
    [
        (exercises.check_recall_at_k, lambda ranked, rel, k: sum(d in rel for d in ranked[:k]) / k),  # precision
        (
            exercises.check_mrr_at_k,
            lambda ranked, rel, k: next((1 / i for i, d in enumerate(ranked[:k]) if d in rel), 0),
        ),
        (exercises.check_copy_ratio, lambda q, p: float(q.lower() in p.lower())),
        (exercises.check_in_batch_accuracy, lambda q, d: float(np.mean(np.argmax(q @ d.T, axis=0) == 0))),
        (exercises.check_steps, lambda rows, batch, epochs: rows // batch * epochs),  # drops the last batch
        (exercises.check_to_binary, lambda emb: np.packbits(emb >= 0.1, axis=-1)),
        (exercises.check_hamming, lambda q, d: np.bitwise_xor(d, q).sum(axis=1)),
        (exercises.check_promote, lambda cur, cand, slices, tol: "promote"),
        (exercises.check_keyboard_typo, lambda word, rng: word[::-1] if len(word) >= 4 else word),
    ],
)
def test_wrong_answers_fail_with_what_differs(check, wrong):
    with pytest.raises(AssertionError):
        check(wrong)


def test_wrong_prediction_fails_with_the_measurement():
    with pytest.raises(AssertionError, match="measured"):
        exercises.check_overlap_prediction("fewer", {0: 10, 64: 13})


def test_every_course_notebook_has_exercises_and_solutions():
    builder = _builder()
    course_stems = sorted(p.stem for p in (config.repo_root() / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
    assert sorted(s.notebook for s in builder.SHEETS) == course_stems
    assert all(2 <= len(s.exercises) <= 3 for s in builder.SHEETS)


def test_committed_notebooks_match_the_builder(tmp_path):
    builder = _builder()
    for built in builder.build(tmp_path):
        committed = config.repo_root() / "notebooks" / built.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} is missing: run `python notebooks/build_exercises.py`"
        sources = [[c.source for c in nbformat.read(p, as_version=4).cells] for p in (built, committed)]
        assert sources[0] == sources[1], (
            f"{committed} differs from its builder: run `python notebooks/build_exercises.py`"
        )


def test_solutions_pass_their_checks_and_exercises_run_unsolved(capsys):
    builder = _builder()
    for sheet in builder.SHEETS:
        for solved in (True, False):
            cells = builder.notebook(sheet, solved).cells
            code = "\n\n".join(c.source for c in cells if c.cell_type == "code" and c.source != builder.COLAB)
            if "load_model" in code or "load_covidqa" in code:
                continue  # 01's and 05's sheets load the model: executed by nbval in `make test`
            exec(compile(code, sheet.notebook, "exec"), {"random": random})  # solutions: `assert exercises.check_...`
            out = capsys.readouterr().out
            assert ("not solved yet" not in out) if solved else ("correct" not in out), f"{sheet.notebook}: {out}"
