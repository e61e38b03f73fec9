"""Command-line entry point: ``selfsup COMMAND ...`` (also ``python -m selfsup``).

Each subcommand lives in ``selfsup/commands/<name>.py`` and exposes ``add_parser(subparsers)``; the parser
it adds carries ``func(args) -> int``. User errors print one line and exit 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ["pretrain", "eval", "embed", "search", "report", "info", "demo", "masks", "audit", "views"]  # modules under selfsup.commands


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised visual representation learning: pretrain, evaluate, embed.",
        formatter_class=_Formatter,
        epilog="example:\n  selfsup pretrain --data builtin:mnist --method simclr --backbone cnn-compact --epochs 5 --out runs/a\n"
        "  selfsup eval knn --checkpoint runs/a --train builtin:mnist:train --test builtin:mnist:test",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"selfsup.commands.{name}").add_parser(sub, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    from selfsup.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    from selfsup.runtime import tune_allocator

    tune_allocator()  # before any tensor is allocated: every command allocates and frees large tensors
    debug = args.debug or os.environ.get("SELFSUP_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        # one write() per line: under torchrun several ranks share stderr, and print() writes the text and
        # the newline separately, so two ranks' lines could run together
        sys.stderr.write(f"selfsup: error: {exc}\n")
        sys.stderr.flush()
        return exc.exit_code
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130
    finally:
        from selfsup import distributed

        distributed.cleanup()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
