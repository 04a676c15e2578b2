"""What the ``featstore`` and ``fusion`` command lines share: the consoles, the one-line error, ``--debug``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from featstore.errors import FeatstoreError

console = Console()
err = Console(stderr=True)

StoreArg = Annotated[Path, typer.Option("--store", "-s", help="Store path: *.zarr (Zarr v3) or *.h5 (HDF5)")]


def fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


# Set by the root callback of either app for this one command-line run.
_RUN = {"debug": False}


def guard(fn):
    """Turn a user's error (bad input, missing store or weights) into one red line and exit code 1; ``--debug``
    (before the command) re-raises it with its traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FeatstoreError, FileNotFoundError, KeyError, ValueError) as exc:
            if _RUN["debug"]:
                raise
            # KeyError's str() adds quotes of its own; every other message is printed as it is.
            fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    return wrapper


def root_options(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error")] = False,
                  ) -> None:
    _RUN["debug"] = debug


def print_notes(notes: list[str]) -> None:
    for n in notes:
        console.print(f"  [dim]•[/] {n}")


