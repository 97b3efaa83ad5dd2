"""``cpcsam benchmark`` (being written): see issue 4."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the benchmark's options to its sub-parser."""
    parser.add_argument("--data", required=True, help="dataset folder in BUSI layout")


def run(args) -> int:
    raise NotImplementedError("cpcsam benchmark is not implemented yet")
