#!/usr/bin/env bash
# The notebooks' Colab cell, run in a kernel made to look like Colab, on Python 3.12 and 3.13 (issue 29, point 4).
#
# Usage, from the repo root, on a machine with python3.12 and python3.13 and the package index reachable:
#   bash benchmarks/colab_check.sh [WORKDIR]        (default /tmp/colabcheck; about 9 GB of CUDA wheels per Python)
#
# What stands in for Colab (an assumption: a Colab image of late 2026 preinstalls a CUDA torch and a slightly
# older transformers 5 / sentence-transformers 6 than the course pins): a fresh venv holding the CUDA build of
# torch 2.13.0 from PyPI, transformers 5.17.0, sentence-transformers 6.0.0 and datasets 5.0.1 (the versions the
# lent GPU machines' image carries), plus ipykernel and nbclient. A stub `google.colab` module in the kernel makes
# the cell's Colab branch run; the cell's GitHub URL becomes a local clone, /content becomes WORKDIR/content.
# It prints every package whose version changed, fails on any downgrade (torch, transformers and
# sentence-transformers above all) and on `pip check`, then runs the setup doctor and a BM25 + encode smoke test.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/colabcheck}
PREINSTALLED=(torch==2.13.0 transformers==5.17.0 sentence-transformers==6.0.0 datasets==5.0.1 ipykernel nbclient)
rm -rf "$WORK" && mkdir -p "$WORK/content"
git clone -q "$ROOT" "$WORK/repo"

interpreter() {  # python3.X on PATH, else pyenv's copy of it
  if "python$1" --version >/dev/null 2>&1; then echo "python$1"; else
    PYENV_VERSION=$(pyenv versions --bare | grep "^$1" | tail -1) pyenv which "python$1"; fi
}

for version in 3.12 3.13; do
  py=$(interpreter "$version")
  venv="$WORK/venv-$version"
  echo "=== $py: $($py --version), Colab stand-in: ${PREINSTALLED[*]}"
  $py -m venv "$venv"
  start=$SECONDS
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "${PREINSTALLED[@]}"
  echo "preinstall: $((SECONDS - start)) s, pip $("$venv/bin/python" -m pip --version | cut -d' ' -f2)"
  "$venv/bin/python" -m pip freeze --exclude-editable | sort >"$WORK/before-$version.txt"
  rm -rf "$WORK/content/embtune"
  start=$SECONDS
  (cd "$WORK/content" && "$venv/bin/python" - "$ROOT/notebooks/01_rag_basics.ipynb" "$WORK" <<'PY'
import sys
import types

import nbformat
from nbclient import NotebookClient

source, work = sys.argv[1], sys.argv[2]
cell = nbformat.read(source, as_version=4).cells[1].source
assert 'if "google.colab" in sys.modules' in cell, "cell 1 of notebook 01 is not the Colab cell"
cell = cell.replace("https://github.com/embtune/embtune.git", f"file://{work}/repo").replace("/content/", f"{work}/content/")
stub = """import importlib.machinery, sys, types
for name in ("google", "google.colab"):  # with a __spec__, as find_spec (accelerate, transformers) expects
    sys.modules[name] = types.ModuleType(name)
    sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)"""
check = "import torch, transformers, sentence_transformers, embtune_utils\n"
check += "print('in the kernel:', torch.__version__, transformers.__version__, sentence_transformers.__version__)"
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (stub, cell, check)])
NotebookClient(nb, kernel_name="python3", timeout=1200, allow_errors=True).execute()
errors = [f"{out.ename}: {out.evalue}" for c in nb.cells for out in c.outputs if out.output_type == "error"]
for c in nb.cells[1:]:
    for out in c.outputs:
        print(out.get("text", "").rstrip()[-1500:])
sys.exit(f"the kernel raised {errors}" if errors else 0)
PY
  )
  echo "Colab cell: $((SECONDS - start)) s"
  "$venv/bin/python" -m pip freeze --exclude-editable | sort >"$WORK/after-$version.txt"
  "$venv/bin/python" - "$WORK/before-$version.txt" "$WORK/after-$version.txt" <<'PY'
import sys

from packaging.version import Version


def read(path):
    pins = (line.split("==") for line in open(path) if "==" in line)
    return {name.lower(): version.strip() for name, version in pins}


before, after = read(sys.argv[1]), read(sys.argv[2])
down = []
for name in sorted(before):
    old, new = before[name], after.get(name)
    if new != old:
        print(f"changed: {name} {old} -> {new}")
        if new is None or Version(new) < Version(old):
            down.append(name)
print(f"added: {len(set(after) - set(before))} packages; downgraded or removed: {down or 'none'}")
for name in ("torch", "transformers", "sentence-transformers"):
    print(f"{name}: {before.get(name)} -> {after.get(name)}")
sys.exit(1 if down else 0)
PY
  "$venv/bin/python" -m pip check
  (cd "$WORK/content/embtune/notebooks" && "$venv/bin/python" -m embtune_utils.doctor | grep -vE '^  ok    (RAM|free disk)')
  (cd "$WORK/content/embtune/notebooks" && EMBTUNE_MODE=fast "$venv/bin/python" - <<'PY'
import bm25s

from embtune_utils import models

model = models.load_model()
vectors = model.encode(["How long is the incubation period?", "The incubation period is about 5 days."])
print("encode:", vectors.shape, "cosine", round(float(vectors[0] @ vectors[1]), 4))
retriever = bm25s.BM25()
retriever.index(bm25s.tokenize(["camels carry MERS", "the incubation period is five days"], show_progress=False),
                show_progress=False)
docs, scores = retriever.retrieve(bm25s.tokenize(["incubation"], show_progress=False), k=1, show_progress=False)
print("bm25s top hit:", int(docs[0, 0]), round(float(scores[0, 0]), 3))
PY
  )
  echo "=== Python $version: ok"
done
