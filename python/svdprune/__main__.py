"""Command line: ``python -m svdprune <command>`` (also installed as ``svdprune``)."""

from __future__ import annotations

import argparse

from . import __version__, evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svdprune", description="SVD-based vision-token pruning for LLaVA-1.5.")
    parser.add_argument("--version", action="version", version=f"svdprune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")

    from . import demo

    demo_parser = commands.add_parser(
        "demo",
        help="prune the visual tokens of a photograph and plot the kept patches",
        description=demo.__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    eval_parser = commands.add_parser(
        "eval",
        help="GQA / TextVQA accuracy of a local LLaVA-1.5 checkpoint with pruning, resumable",
        description=evaluate.DESCRIPTION,
    )
    evaluate.add_arguments(eval_parser)
    eval_parser.set_defaults(run=_evaluate)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    evaluate.run(args)  # prints the score (and writes --summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
