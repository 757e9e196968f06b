"""The `embtune` command (also `python -m embtune_utils`): `embtune search "question"` over a saved artifact."""

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
    print(f"top {args.k} of {len(deployment.chunks)} chunks, score = {deployment.index.score_name()}")
    for hit in deployment.search(args.query, k=args.k):
        text = textwrap.shorten(" ".join(hit["text"].split()), width=args.width, placeholder=" ...")
        print(f"{hit['rank']:>2}. {hit['score']:8.4f}  [{hit['id']}] {hit['title']}\n    {text}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task."""
    top = argparse.ArgumentParser(prog="embtune", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    s = commands.add_parser("search", help="search a deployed artifact (notebook 07 saves one)")
    s.add_argument("query", help="the question or text to search for")
    s.add_argument("-k", type=int, default=5, help="how many chunks to print (default 5)")
    s.add_argument("--artifact", default=None, help="artifact folder (default: artifacts/<mode>/deploy)")
    s.add_argument("--width", type=int, default=200, help="characters of each chunk to print")
    s.set_defaults(run=search)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run a subcommand; a user error prints one line and exits with status 2 (no traceback)."""
    args = parser().parse_args(argv)
    try:
        if args.k < 1:
            raise deploy.DeployError(f"-k {args.k}: ask for at least 1 result.")
        return args.run(args)
    except (deploy.DeployError, config.ConfigError) as err:
        print(f"embtune {args.command}: {err}", file=sys.stderr)
        return 2
