"""How a store commits an object: staged aside, then moved into place in one step.

Crash safety: every slide, failure record, table and view is written under ``_staging/<uuid>`` and
then moved to its final path in one step (a directory rename for Zarr, an HDF5 link move followed by
a flush). Readers only ever look at final paths, so a half-written object is invisible, and an
interrupted write leaves nothing but a staging entry that the next writer removes.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from featstore import integrity
from featstore.backends import row_chunks
from featstore.records import now_iso

_STAGING = "_staging"
_ASIDE = "__replaces__"  # a staging entry holding an object moved aside while its replacement goes in


def _fault_point(step: str) -> None:
    """A SIGKILL at ``step`` when the test environment asks for it (tests/test_faults.py); a no-op otherwise."""
    if os.environ.get("FEATSTORE_TEST_KILL_AT") == step:
        os.kill(os.getpid(), 9)


class StagedCommits:
    """The staging and commit steps of :class:`featstore.store.Store` (a mixin: it uses the store's backend)."""

    def _new_staging(self) -> str:
        self._require_writable()
        # Host and pid in the name let cleanup tell a dead writer's leftovers from a live one's work.
        path = f"{_STAGING}/{os.getpid()}_{socket.gethostname()}_{uuid.uuid4().hex}"
        self._backend.require_group(path)
        return path

    def cleanup_staging(self) -> int:
        """Remove staging entries of writers that no longer run; returns how many were removed. An object a
        dead writer had moved aside to replace, and whose replacement never arrived, is put back."""
        self._require_writable()
        removed = 0
        host = socket.gethostname()
        for entry in self._backend.groups(_STAGING):
            owner, _, replaced = entry.partition(_ASIDE)
            pid, _, rest = owner.partition("_")
            same_host = rest.rsplit("_", 1)[0] == host
            # HDF5 takes one writer at a time (we hold its lock): every entry there is a dead writer's.
            if self.backend_name != "hdf5" and (not same_host or not pid.isdigit() or _pid_alive(int(pid))):
                continue
            target = unquote(replaced) if replaced else None
            if target and not self._backend.has(target):
                self._backend.move(f"{_STAGING}/{entry}", target)
            else:
                self._backend.delete(f"{_STAGING}/{entry}")
            removed += 1
        return removed

    def _swap_in(self, stage: str, final: str) -> None:
        """Replace ``final`` by the complete ``stage``: the old object is moved aside first, into a staging
        entry that names it, so a kill at any moment leaves the old or the new in place, or the old aside
        where the next writer puts it back (cleanup_staging); never neither."""
        be = self._backend
        be.flush()  # the staged object is on disk before it can become visible
        _fault_point("staged")
        if not be.has(final):
            be.move(stage, final)
            _fault_point("committed")
            return
        aside = f"{stage}{_ASIDE}{quote(final, safe='')}"
        be.move(final, aside)
        be.flush()
        _fault_point("aside")
        be.move(stage, final)
        be.flush()
        _fault_point("swapped")
        be.delete(aside)
        be.flush()
        _fault_point("committed")

    def _commit_arrays(self, final: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        stage = self._new_staging()
        digests = {}
        try:
            for name, data in arrays.items():
                data = np.asarray(data)
                digests[name] = integrity.record(data)
                if data.dtype.kind in "UOT":
                    arr = self._backend.create_array(f"{stage}/{name}", data.shape, str, data.shape)
                    if data.size:
                        arr[...] = data.astype(str)
                    continue
                if data.ndim == 2:
                    chunks = (
                        min(data.shape[0], 1024) or 1,
                        min(data.shape[1], row_chunks(data.shape[1], 4 * 1024)) or 1,
                    )
                elif data.ndim >= 1:
                    chunks = (row_chunks(data.shape[0], int(np.prod(data.shape[1:])) * data.itemsize) or 1,
                              *data.shape[1:])
                else:
                    chunks = ()
                arr = self._backend.create_array(f"{stage}/{name}", data.shape, data.dtype, chunks)
                if data.size:
                    arr[...] = data
            self._backend.set_attrs(stage, {**attrs, "committed": now_iso(), "digests": digests})
            self._swap_in(stage, final)
        except BaseException:
            self._backend.delete(stage)
            raise


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
