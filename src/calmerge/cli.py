"""The `calmerge` command line: a thin skin over `calmerge.api`.

Each command parses its flags, calls one API function and renders the result with rich.
User mistakes (`CalmergeError`) become one line on stderr plus a hint, exit code 2.

The file is divided into sections, one per subsystem; each command lives in its section.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional  # noqa: F401  (Optional is used by Typer signatures)

import click
import typer
from rich.console import Console

from calmerge.errors import CalmergeError

app = typer.Typer(
    name="calmerge",
    help="Measure the alignment tax (accuracy, calibration, diversity) and buy it back by merging.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code)


# ───────────────────────────── merge engine (inspect, diff, merge) ─────────────────────────────


# ───────────────────────────── evaluation (eval) ─────────────────────────────


# ───────────────────────────── sweep (sweep, runs, results, export, report) ─────────────────────


# ───────────────────────────── built-in default (organism, demo) ─────────────────────────────


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app and turn user mistakes into one line + exit 2."""
    try:
        app(args=argv, standalone_mode=False)
    except CalmergeError as exc:
        _fail(exc.one_line())
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        _fail("interrupted; finished work is saved", 130)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
