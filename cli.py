"""Command lines ``featstore`` and ``fusion`` (console scripts): each app lives with its package
(``featstore/cli.py``, ``fusion/cli.py``), thin over the Python API."""

from __future__ import annotations

import sys

from featstore.cli import featstore_app
from fusion.cli import fusion_app

__all__ = ["featstore_app", "fusion_app", "main_featstore", "main_fusion"]


def main_featstore() -> None:  # pragma: no cover - console-script entry
    featstore_app()


def main_fusion() -> None:  # pragma: no cover - console-script entry
    fusion_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(featstore_app())
