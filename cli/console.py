"""Console set-up: diagnostics and progress go to stderr; errors become exit codes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from dmreg.errors import DmregError

stderr = Console(stderr=True)


def configure_logging(quiet: bool, verbose: int) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logger = logging.getLogger("dmreg")
    console = RichHandler(console=stderr, show_time=False, show_path=False)
    console.setLevel(level)  # other handlers (a --log-file) may want more than the console
    logger.handlers[:] = [console]
    logger.setLevel(level)
    logger.propagate = False


@contextlib.contextmanager
def exit_codes(debug: bool) -> Iterator[None]:
    """Turn DmregError into its exit code with a one-line message (traceback with --debug)."""
    try:
        yield
    except DmregError as exc:
        if debug:
            stderr.print_exception()
        stderr.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug, not a user error: say so, exit 1
        if debug:
            stderr.print_exception()
        else:
            stderr.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (rerun with --debug for the traceback)",
                         highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
