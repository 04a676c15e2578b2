"""Streaming one slide into staging and committing it in one step."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from featstore import integrity
from featstore.backends import row_chunks
from featstore.commit import Staging
from featstore.errors import AlreadyCommittedError, NodeExistsError
from featstore.records import now_iso


class SlideWriter:
    """Streams one slide's rows into staging, chunk by chunk, in any order, and commits it in one step.

    Rows arrive in batches of any size, in order or not (reader workers share a big slide's row ranges
    between them). Each chunk is assembled in memory and written once, when its last row arrives, so
    memory stays bounded by the partly filled chunks (about one per reader working on the slide) however
    large the slide. Coordinates and tissue fractions (20 bytes a row) are kept until the commit and
    written once: each is a single chunk, which would otherwise be rewritten at every flush.
    """

    def __init__(self, staging: Staging, n: int, dim: int, dtype: str):
        self._staging, self._final = staging, staging.final
        # The commit this writer may replace (a redo of a changed slide); any other commit that appears at
        # the final path meanwhile is a concurrent run's, and is kept.
        self._replaces = self._current_commit()
        self._rows = row_chunks(n, dim * np.dtype(dtype).itemsize)
        self._features = staging.create_array("features", (n, dim), dtype, (self._rows, dim))
        self._small = {
            "coords": staging.create_array("coords", (n, 2), "int64", (max(n, 1), 2)),
            "tissue_fraction": staging.create_array("tissue_fraction", (n,), "float32", (max(n, 1),)),
        }
        self._coords = np.zeros((n, 2), np.int64)
        self._tissue = np.zeros(n, np.float32)
        self._received = np.zeros(n, bool)
        self._chunks: dict[int, list] = {}  # chunk index -> [rows so far, number of rows filled]
        self._hashes: dict[int, str] = {}  # chunk index -> digest of the rows written
        self._dim, self._dtype = dim, np.dtype(dtype)
        self._next = 0
        self.n = n

    def write(self, features: np.ndarray, coords: np.ndarray, tissue_fraction: np.ndarray,
              start: int | None = None) -> None:
        """Rows ``start`` to ``start + len(features)`` (default: right after the previous write)."""
        features = np.asarray(features)
        start = self._next if start is None else int(start)
        end = start + len(features)
        if start < 0 or end > self.n:
            raise ValueError(f"slide writer got rows {start}:{end}, but the slide has {self.n} rows")
        # Finite after the cast to the stored dtype: 1e5 is finite as float32 and inf as float16.
        with np.errstate(over="ignore", invalid="ignore"):
            features = features.astype(self._dtype, copy=False)
        if not np.isfinite(features).all():
            r, c = (int(v) for v in np.argwhere(~np.isfinite(features))[0])
            raise ValueError(f"{self._final}: feature row {start + r}, column {c} is not finite as {self._dtype} "
                             f"(NaN, Inf, or beyond its range of about ±{float(np.finfo(self._dtype).max):.0f})")
        if self._received[start:end].any():
            raise ValueError(f"slide writer got rows {start}:{end}, some of them twice")
        self._received[start:end] = True
        self._coords[start:end] = coords
        self._tissue[start:end] = tissue_fraction
        self._next = end
        pos = start
        while pos < end:
            c = pos // self._rows
            c0, c1 = c * self._rows, min((c + 1) * self._rows, self.n)
            take = min(end, c1) - pos
            chunk = self._chunks.setdefault(c, [np.empty((c1 - c0, self._dim), self._dtype), 0])
            chunk[0][pos - c0:pos - c0 + take] = features[pos - start:pos - start + take]
            chunk[1] += take
            if chunk[1] == c1 - c0:
                self._features[c0:c1] = chunk[0]
                self._hashes[c] = integrity.piece_hash(chunk[0])
                del self._chunks[c]
            pos += take

    def commit(self, attrs: Mapping[str, Any]) -> None:
        got = int(self._received.sum())
        if got != self.n:
            raise ValueError(f"slide writer got {got} rows, expected {self.n}")
        if self.n:
            self._small["coords"][:] = self._coords
            self._small["tissue_fraction"][:] = self._tissue
        digests = {
            "features": {"shape": [self.n, self._dim], "dtype": str(self._dtype), "chunk_rows": self._rows,
                         "sha256": integrity.combine([self._hashes[c] for c in range(len(self._hashes))])},
            "coords": integrity.record(self._coords), "tissue_fraction": integrity.record(self._tissue),
        }
        self._staging.set_attrs({**attrs, "n_patches": self.n, "committed": now_iso(), "digests": digests,
                                 "commit_id": uuid.uuid4().hex})
        current = self._current_commit()
        if current is not None and current != self._replaces:
            self.abort()
            raise AlreadyCommittedError(f"{self._final}: already committed by another run")
        try:
            # A success supersedes an earlier failure record of the same slide.
            self._staging.commit(replace=self._replaces is not None,
                                 supersedes=self._final.replace("/slides/", "/failed/"))
        except NodeExistsError as exc:  # the other run's commit landed between our check and our move
            self.abort()
            raise AlreadyCommittedError(f"{self._final}: already committed by another run") from exc
        except BaseException:  # anything else (a full disk, a name the file system refuses) is an error
            self.abort()
            raise

    def _current_commit(self) -> str | None:
        """The commit id of the slide at the final path now (read aside while it is being replaced), or None."""
        attrs = self._staging.final_attrs()
        return None if attrs is None else attrs.get("commit_id")

    def abort(self) -> None:
        self._staging.abort()
