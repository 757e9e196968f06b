"""The `embtune` command (also `python -m embtune_utils`).

embtune run --corpus PATH --out DIR [...]   the whole course on your corpus, resumable (see `embtune run -h`)
embtune search "question" [--artifact DIR]  the top chunks of a saved artifact (notebook 07's, or a run's --out)
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from embtune_utils import config, deploy


def search(args: argparse.Namespace) -> int:
    """Load the artifact, search it, print the top chunks with their scores."""
    folder = Path(args.artifact) if args.artifact else deploy.artifact_dir()
    deployment = deploy.load_artifact(folder)
    print(f"top {args.k} of {len(deployment.chunks)} chunks, score = {deployment.score_name()}")
    for hit in deployment.search(args.query, k=args.k):
        text = textwrap.shorten(" ".join(hit["text"].split()), width=args.width, placeholder=" ...")
        print(f"{hit['rank']:>2}. {hit['score']:8.4f}  [{hit['id']}] {hit['title']}\n    {text}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run (or resume) the whole pipeline and print where its outputs are."""
    from embtune_utils import pipeline

    fields = ("corpus", "out", "base_model", "mode", "train_queries", "generator", "base_url", "epochs", "batch_size")
    cfg = pipeline.RunConfig(
        **{f: getattr(args, f) for f in fields}, seed=args.seed, hard_negatives=args.hard_negatives, rerank=args.rerank
    )
    metrics = pipeline.run(cfg)
    t = metrics["test"]
    print("done: test NDCG@10 " + ", ".join(f"{n} {v['ndcg@10']:.3f}" for n, v in t.items()))
    dep = metrics["deployed"]
    print(f"deployed (chosen on dev): {dep['retriever']}, {dep['config']}, test NDCG@10 {dep['ndcg@10']:.3f}")
    print(
        f"outputs in {args.out}: metrics.json, report.md, run.json, model/, index/; search: embtune search "
        f'"..." --artifact {args.out}'
    )
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task."""
    from embtune_utils import pipeline, synth, train

    top = argparse.ArgumentParser(prog="embtune", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    r = commands.add_parser(
        "run",
        help="the whole course on your corpus: load, queries, negatives, train, evaluate, deploy, report",
        description=pipeline.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    helps = {
        "corpus": "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/{train,dev,test}.tsv; test required), a folder "
        "of .txt/.md files, or a Hugging Face dataset name (online)",
        "out": "output folder; re-running with the same --out resumes",
        "base_model": f"Hub name or local folder of the model to tune (default: {config.BASE_MODEL})",
        "mode": "how much data and work (default: $EMBTUNE_MODE, else default)",
        "train_queries": "generated queries, the corpus's labelled train queries, or both (default)",
        "generator": "cache (default) replays queries.jsonl in --out and the course's shipped cache; local runs "
        "SmolLM2-135M offline (slow on a CPU); openai and openai-batch need OPENAI_API_KEY",
        "base_url": "the server's URL for --generator openai-compatible (vLLM, Ollama, ...)",
        "epochs": "passes over the training pairs (default: sized to the number of pairs, pipeline.training_budget)",
        "batch_size": "pairs per batch (default: sized to the number of pairs, pipeline.training_budget)",
        "seed": f"seed for splits, sampling and training (default: {config.SEED})",
        "hard_negatives": "mined hard negatives per pair (default 0: in-batch negatives only, the course's recipe)",
        "rerank": "train a cross-encoder reranker (notebook 06b) and add 'bm25 + rerank' and 'hybrid weighted + "
        "rerank' to the retrievers chosen among on dev (default: on a GPU only; a CPU trains it at the mode's budget)",
    }
    r.add_argument("--corpus", required=True, help=helps["corpus"])
    r.add_argument("--out", required=True, help=helps["out"])
    r.add_argument("--base-model", default=config.BASE_MODEL, help=helps["base_model"])
    r.add_argument("--mode", default=config.get_mode(), choices=config.MODES, help=helps["mode"])
    r.add_argument("--train-queries", default="both", choices=pipeline.TRAIN_QUERIES, help=helps["train_queries"])
    r.add_argument("--generator", default="cache", choices=synth.GENERATORS, help=helps["generator"])
    r.add_argument("--base-url", default=None, help=helps["base_url"])
    r.add_argument("--epochs", type=int, default=None, help=helps["epochs"])
    r.add_argument("--batch-size", type=int, default=None, help=helps["batch_size"])
    r.add_argument("--seed", type=int, default=config.SEED, help=helps["seed"])
    r.add_argument("--hard-negatives", type=int, default=train.FINAL["hard_negatives"], help=helps["hard_negatives"])
    r.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=None, help=helps["rerank"])
    r.set_defaults(run=run)
    s = commands.add_parser("search", help="search a deployed artifact (notebook 07 saves one)")
    s.add_argument("query", help="the question or text to search for")
    s.add_argument("-k", type=int, default=5, help="how many chunks to print (default 5)")
    s.add_argument("--artifact", default=None, help="artifact folder (default: artifacts/<mode>/deploy)")
    s.add_argument("--width", type=int, default=200, help="characters of each chunk to print")
    s.set_defaults(run=search)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user error prints one line and exits with status 2 (no traceback)."""
    from embtune_utils import data, models, negatives, pipeline, rag, synth, train

    args = parser().parse_args(argv)
    user_errors = (deploy.DeployError, config.ConfigError, data.DataError, models.ModelUnavailableError)
    user_errors += (pipeline.RunError, train.TrainError, negatives.NegativesError, rag.MissingKeyError)
    try:
        if getattr(args, "k", 1) < 1:
            raise deploy.DeployError(f"-k {args.k}: ask for at least 1 result.")
        return args.run(args)
    except user_errors as err:
        print(f"embtune {args.command}: {err}", file=sys.stderr)
        return 2
    except synth.GenerationError as err:
        print(f"embtune {args.command}: {err} (re-run the same command to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"embtune {args.command}: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130
