"""Command-line entry point: ``selfsup COMMAND ...`` (also ``python -m selfsup``).

Each subcommand lives in ``selfsup/commands/<name>.py`` and exposes ``add_parser(subparsers)``; the parser
it adds carries ``func(args) -> int``. User errors print one line and exit 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn, TextIO

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


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (``selfsup: error: ...``, exit 2) like every other user error."""

    def error(self, message: str) -> NoReturn:
        _say(f"selfsup: error: {self.prog}: {message} (see `{self.prog} --help`)")
        sys.exit(2)


def _say(line: str, stream: TextIO | None = None) -> None:
    """Write one line to stderr in one write() (ranks under torchrun share it), even if the terminal's encoding
    cannot show a file name in it (undecodable bytes in names arrive as surrogates)."""
    stream = stream or sys.stderr
    enc = getattr(stream, "encoding", None) or "utf-8"
    stream.write((line + "\n").encode(enc, "backslashreplace").decode(enc, "replace"))
    stream.flush()


def _safe_streams() -> None:
    """Printing a path the terminal cannot encode must not crash a command: escape it instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that was already used or cannot be changed
                pass


def _file_error(exc: BaseException) -> str | None:
    """A one-line message for an OS error on a named file (a full disk, a folder without permission, ...)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        other = f" -> {exc.filename2}" if exc.filename2 else ""
        return f"{exc.filename}{other}: {what}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
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
    """Run one command. The one error boundary of the CLI:

    - a :class:`UserError` (bad input, unreadable file, busy run folder ...) -> one line, its exit code (2);
    - an OS error on a named file (disk full, permission denied) -> one line naming the file, exit 2;
    - Ctrl-C outside the training loop -> one line, exit 130;
    - anything else is a bug in selfsup -> one "internal error" line asking for a report, exit 1; the traceback
      only with ``--debug`` (or SELFSUP_DEBUG=1).
    """
    from selfsup.errors import UserError

    _safe_streams()
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
    debug = args.debug or os.environ.get("SELFSUP_DEBUG") == "1"
    try:
        from selfsup.runtime import tune_allocator

        tune_allocator()  # before any tensor is allocated: every command allocates and frees large tensors
        return int(args.func(args) or 0)
    except UserError as exc:
        if debug:
            raise
        # one write() per line: under torchrun several ranks share stderr, and print() writes the text and
        # the newline separately, so two ranks' lines could run together
        _say(f"selfsup: error: {' '.join(str(exc).split())}")
        return exc.exit_code
    except KeyboardInterrupt:
        _say("selfsup: interrupted")
        return 130
    except BrokenPipeError:  # `selfsup methods | head -1`: the reader left; not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")  # Python flushes stdout at exit: into nothing now
        except OSError:
            pass
        return 141
    except Exception as exc:
        if debug:
            raise
        message = _file_error(exc)
        if message is not None:
            _say(f"selfsup: error: {' '.join(message.split())}")
            return 2
        first = " ".join((str(exc).strip().splitlines() or [""])[0].split())[:200]
        _say(f"selfsup: internal error: {type(exc).__name__}{': ' + first if first else ''}; please report it "
             "(rerun with --debug for the traceback)")
        return 1
    finally:
        from selfsup import distributed

        distributed.cleanup()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
