#!/usr/bin/env bash
# Issue 9: the whole course in `full` mode on one GPU machine that reaches no package index and no Hub.
# Run from the repo root through the device tool, one step per call (a call may carry 64 MiB, so the wheels and
# the model travel in two folders, .devA and .devB, over two calls of one warm machine):
#   setup-a   install .devA's wheels into /tmp/site; put the model copy (.devA/minilm) into a Hub-layout cache
#   setup-b   install .devB's wheels; copy the repo to /tmp/course, where the course runs untouched by later calls
#   bench     benchmarks/train_throughput.py at batch 512 (fp32 and bf16, --profile) and at full mode's batch
#   start     `python -m embtune_utils.course run --mode full` in the background (log: /tmp/course/course.log)
#   poll      wait up to $2 seconds for it, print the log; when done, pack notebooks, results and log into $OUT
#   rerun     run the notebooks named after it in the foreground (after a fix), pack them into $OUT
#   torchrun  `torchrun --nproc_per_node 1 -m embtune_utils.train` on the data the course made
# The Python packages are the CPU course's versions (pyproject), not the machine's sentence-transformers 6 /
# transformers 5; torch is the machine's own CUDA build.
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HOME=/tmp/hf HF_HUB_OFFLINE=1 EMBTUNE_MODE=full
COURSE=/tmp/course
SNAPSHOT=/tmp/hf/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/offline-copy

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$1"/*.whl
}

case "$1" in
  setup-a)
    install .devA
    mkdir -p "$SNAPSHOT" "${SNAPSHOT%/snapshots/*}/refs" && cp -r .devA/minilm/. "$SNAPSHOT"/
    printf offline-copy >"${SNAPSHOT%/snapshots/*}/refs/main"  # no newline: the Hub client reads it verbatim
    # The copy was carried with fp16-rounded weights (64 MiB limit): upcast them to fp32, as the model is trained.
    python3 - "$SNAPSHOT/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
weights = {k: v.float().contiguous() for k, v in load_file(sys.argv[1]).items()}
save_file(weights, sys.argv[1], metadata={"format": "pt"})
print("model weights:", {str(v.dtype) for v in weights.values()}, sum(v.numel() for v in weights.values()), "values")
EOF
    ;;
  setup-b)
    install .devB
    rm -rf "$COURSE" && mkdir -p "$COURSE" && cp -r embtune_utils data notebooks benchmarks results pyproject.toml README.md "$COURSE"/
    if [ -d artifacts/full ]; then mkdir -p "$COURSE/artifacts" && cp -r artifacts/full "$COURSE/artifacts/"; fi
    cd "$COURSE" && PYTHONPATH=/tmp/site:$COURSE python3 -c "
from embtune_utils import config, models
print(config.describe()); print(models.resolve_model())
import faiss, bm25s, optimum.onnxruntime, nbclient, ipykernel, datasets, openai; print('imports ok')"
    ;;
  bench)
    cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 benchmarks/train_throughput.py --batch-size 512 --profile 2>&1 | tee "$OUT/bench.log"
    python3 benchmarks/train_throughput.py --batch-size "$(python3 -c 'from embtune_utils import config; print(config.settings().train_batch_size)')" --precisions bf16 2>&1 | tee -a "$OUT/bench.log"
    ;;
  start)
    cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    setsid nohup bash -c "date -u +'start %FT%TZ'; python3 -m embtune_utils.course run --mode full; echo exit \$?; date -u +'end %FT%TZ'" \
      >"$COURSE/course.log" 2>&1 </dev/null &
    sleep 5 && cat "$COURSE/course.log"
    ;;
  rerun)  # notebooks named after it, in full mode, in the foreground (after a fix); packs like poll
    shift && cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    python3 -m embtune_utils.course run --mode full "$@" 2>&1 | grep -v 'Kernel is running over TCP' | tee rerun.log || true
    tar czf "$OUT/rerun.tgz" "$@" results/full rerun.log
    ;;
  torchrun)  # the training script under torchrun with one process, unchanged (after the course made its data)
    cd "$COURSE" && export PYTHONPATH=/tmp/site:$COURSE
    python3 -m torch.distributed.run --nproc_per_node 1 -m embtune_utils.train --no-resume --score-test \
      --out /tmp/torchrun1 2>&1 | grep -v 'Kernel is running over TCP' | tail -3
    ;;
  poll)
    for _ in $(seq "${2:-300}"); do grep -q '^exit ' "$COURSE/course.log" && break; sleep 1; done
    grep -v 'Kernel is running over TCP' "$COURSE/course.log"
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    if grep -q '^exit ' "$COURSE/course.log"; then
      cd "$COURSE" && tar czf "$OUT/full_course.tgz" notebooks/*.ipynb results/full course.log && ls -la "$OUT"
    fi
    ;;
  *) echo "usage: $0 setup-a|setup-b|bench|start|poll [seconds]|rerun NOTEBOOK...|torchrun" >&2; exit 2 ;;
esac
