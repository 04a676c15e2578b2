"""What the ``featstore`` and ``fusion`` command lines share: the consoles, the one-line error, ``--debug``."""

from __future__ import annotations

import os
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
        except (FeatstoreError, OSError, KeyError, ValueError) as exc:  # OSError: a path the system refuses
            if _RUN["debug"]:
                raise
            # KeyError's str() adds quotes of its own; every other message is printed as it is.
            fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    return wrapper


def writable_output(path: Path | None, folder: bool, flag: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work is done (a run that trains for
    minutes and then cannot write its results has lost them)."""
    if path is None:
        return
    if folder and path.exists() and not path.is_dir():
        fail(f"{flag} {path} is a file; give a folder (it is created if absent)")
    if not folder and path.is_dir():
        fail(f"{flag} {path} is a folder; give a file name")
    parent = path if folder else path.parent
    while not parent.exists():  # the nearest existing ancestor is where the first folder will be made
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{flag} {path}: {parent} is a file, so nothing can be written below it")
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: {parent} is not writable")


def root_options(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error")] = False,
                  ) -> None:
    _RUN["debug"] = debug


def print_notes(notes: list[str]) -> None:
    for n in notes:
        console.print(f"  [dim]•[/] {n}")


