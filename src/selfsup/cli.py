"""Command-line entry point: ``selfsup COMMAND ...`` (also ``python -m selfsup``).

Each subcommand lives in ``selfsup/commands/<name>.py`` and exposes ``add_parser(subparsers)``; the parser
it adds carries ``func(args) -> int``. User errors print one line and exit 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ["pretrain", "eval", "embed", "search", "report", "export", "info", "demo", "masks", "audit", "views"]  # modules under selfsup.commands


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default only when it is a real value: not for None (the config decides), switches, or
    help that already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if d is None or d is False or d == "" or d == argparse.SUPPRESS or "default" in text:  # `is`: keep 0
            return text
        return super()._get_help_string(action)


def _add_verbosity(parser: argparse.ArgumentParser, top: bool) -> None:
    """-q/-v on the top parser and on every sub-command (so `selfsup pretrain ... -v` works too); a
    sub-command that already owns one of the flags (e.g. `methods --verbose`) keeps its own meaning."""
    default = 0 if top else argparse.SUPPRESS
    for flags, dest, text in ((("-q", "--quiet"), "quiet_count", "print less: results, warnings and errors only"),
                              (("-v", "--verbose"), "verbose_count", "print more (e.g. the resolved config)")):
        taken = [f for f in flags if f in parser._option_string_actions]
        free = [f for f in flags if f not in taken]
        if free and not taken:
            parser.add_argument(*free, dest=dest, action="count", default=default, help=text)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbosity(child, False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup",
        description="Self-supervised visual representation learning: pretrain, evaluate, embed.",
        formatter_class=_Formatter,
        epilog="example:\n  selfsup pretrain --data builtin:mnist --method simclr --backbone cnn-compact --epochs 5 --out runs/a\n"
        "  selfsup eval knn --checkpoint runs/a --train builtin:mnist:train --test builtin:mnist:test",
    )
    from selfsup import __version__

    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"selfsup.commands.{name}").add_parser(sub, _Formatter)
    _add_verbosity(parser, True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from selfsup.errors import UserError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # bare `selfsup` (or `selfsup eval`): help, like git, exit 0
        sub_parser = parser
        if args.command:
            sub_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
        sub_parser.print_help()
        return 0
    from selfsup import console

    console.set_verbosity(console.NORMAL + args.verbose_count - args.quiet_count)
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
