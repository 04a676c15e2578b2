"""How a store commits an object: staged aside, then moved into place in one step.

Crash safety: every feature set, slide, failure record, table and view is written under
``_staging/<uuid>`` and then moved to its final path in one step (a directory rename for Zarr, an HDF5
link move followed by a flush); the move refuses a path that is taken, so of two runs creating one
object exactly one succeeds. Readers look at final paths, and at the aside entry of an object being
replaced, so a half-written object is invisible, a replaced one never vanishes, and an interrupted
write leaves nothing but a staging entry that the next writer removes.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import numpy as np

from featstore import integrity
from featstore.backends import row_chunks
from featstore.errors import NodeExistsError
from featstore.records import now_iso

_STAGING = "_staging"
# A staging entry holding an object moved aside while its replacement goes in: the object is its child
# ``obj`` and its attribute ``replaces`` names the final path. The name never holds the object's name,
# so a name that fits the store fits its staging too.
_ASIDE = "-aside"
_LEGACY_ASIDE = "__replaces__"  # the quoted final path in the entry's name (stores written before 2026-12)


def _fault_point(step: str) -> None:
    """A SIGKILL at ``step`` when the test environment asks for it (tests/test_faults.py); a no-op otherwise."""
    if os.environ.get("FEATSTORE_TEST_KILL_AT") == step:
        os.kill(os.getpid(), 9)


class Staging:
    """One staging entry, written into and then committed to its final path in one step, or aborted: what a
    writer holds instead of the store's backend."""

    def __init__(self, store: StagedCommits, final: str):
        self._store, self._backend, self.final = store, store._backend, final
        self.path = store._new_staging()

    def create_array(self, name: str, shape: tuple, dtype, chunks: tuple):
        return self._backend.create_array(f"{self.path}/{name}", shape, dtype, chunks)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._backend.set_attrs(self.path, attrs)

    def final_attrs(self) -> dict | None:
        """The attributes of the object at the final path now (read aside while it is being replaced), or None."""
        node = self._store._locate(self.final)
        return None if node is None else self._backend.attrs(node)

    def commit(self, replace: bool, supersedes: str | None = None) -> None:
        """Move the staged object to the final path (see ``StagedCommits._swap_in``); then remove
        ``supersedes`` (a failure record the object replaces)."""
        self._store._swap_in(self.path, self.final, replace)
        if supersedes is not None:
            self._backend.delete(supersedes)
            self._backend.flush()

    def abort(self) -> None:
        self._backend.delete(self.path)


class StagedCommits:
    """The staging and commit steps of :class:`featstore.store.Store` (a mixin: it uses the store's backend)."""

    def _new_staging(self) -> str:
        self._require_writable()
        # Host and pid in the name let cleanup tell a dead writer's leftovers from a live one's work.
        path = f"{_STAGING}/{owner_id()}_{uuid.uuid4().hex}"
        self._backend.require_group(path)
        return path

    def _owner_alive(self, entry: str) -> bool:
        if self._backend.single_writer and self._backend.writable:
            return False  # one writer at a time, and we hold its lock: every entry is a dead one's
        return owner_alive(entry.split(_LEGACY_ASIDE, 1)[0].removesuffix(_ASIDE).rsplit("_", 1)[0])

    def asides(self) -> dict[str, str]:
        """Objects moved aside by a replacement still under way, or one that a dead writer left: final path ->
        where the old object is now. Readers read them there, so a replacement never hides an object."""
        found = {}
        for entry in self._backend.groups(_STAGING):
            path = f"{_STAGING}/{entry}"
            if entry.endswith(_ASIDE):
                target = self._backend.attrs(path).get("replaces")
                path += "/obj"
            elif _LEGACY_ASIDE in entry:
                target = unquote(entry.split(_LEGACY_ASIDE, 1)[1])
            else:
                continue
            if target and self._backend.has(path):
                found[target] = path
        return found

    def _locate(self, final: str) -> str | None:
        """Where the object committed at ``final`` is: there, or aside while it is being replaced; None if absent."""
        if self._backend.has(final):
            return final
        # Looked for aside, then in place once more: a replacement may have finished between the two looks.
        return self.asides().get(final) or (final if self._backend.has(final) else None)

    def cleanup_staging(self) -> int:
        """Remove staging entries of writers that no longer run; returns how many were removed. An object a
        dead writer had moved aside to replace, and whose replacement never arrived, is put back."""
        self._require_writable()
        asides = {path.split("/")[1]: (final, path) for final, path in self.asides().items()}
        removed = 0
        for entry in self._backend.groups(_STAGING):
            if self._owner_alive(entry):
                continue
            if entry in asides and not self._backend.has(asides[entry][0]):
                self._backend.move(asides[entry][1], asides[entry][0])
            self._backend.delete(f"{_STAGING}/{entry}")
            removed += 1
        self._backend.flush()
        return removed

    def _swap_in(self, stage: str, final: str, replace: bool, steps: str = "") -> None:
        """Move the complete ``stage`` to ``final``. Where an object is there already it is replaced only when
        ``replace`` (else NodeExistsError): moved aside first, into a staging entry that names it, so a kill
        at any moment leaves the old or the new in place, or the old aside, where readers still find it and
        the next writer puts it back (cleanup_staging); never neither. Two runs creating one object: the
        second gets NodeExistsError (the move refuses a taken path), never a silent replacement. ``steps``
        prefixes the names of the fault points, so a test can kill one kind of commit among several."""
        be = self._backend
        be.flush()  # the staged object is on disk before it can become visible
        _fault_point(steps + "staged")
        if not be.has(final):
            be.move(stage, final)
            _fault_point(steps + "committed")
            return
        if not replace:
            raise NodeExistsError(f"{self.path}: {final} already exists")
        aside = f"{stage}{_ASIDE}"
        be.require_group(aside)
        be.set_attrs(aside, {"replaces": final})
        be.move(final, f"{aside}/obj")
        be.flush()
        _fault_point(steps + "aside")
        try:
            be.move(stage, final)
        except NodeExistsError:  # another run's replacement landed first: theirs stands, the old one goes
            be.delete(aside)
            raise
        be.flush()
        _fault_point(steps + "swapped")
        be.delete(aside)
        be.flush()
        _fault_point(steps + "committed")

    def _commit_arrays(self, final: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
                       replace: bool = False) -> None:
        staging = Staging(self, final)
        digests = {}
        try:
            for name, data in arrays.items():
                data = np.asarray(data)
                digests[name] = integrity.record(data)
                if data.dtype.kind in "UOT":
                    arr = staging.create_array(name, data.shape, str, data.shape)
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
                arr = staging.create_array(name, data.shape, data.dtype, chunks)
                if data.size:
                    arr[...] = data
            staging.set_attrs({**attrs, "committed": now_iso(), "digests": digests})
            staging.commit(replace)
        except BaseException:
            staging.abort()
            raise


def owner_id() -> str:
    """This process, as staging entries and import records name their writer."""
    return f"{os.getpid()}_{socket.gethostname()}"


def owner_alive(owner: str) -> bool:
    """Whether the writer ``owner_id()`` named may still run: a live pid on this host, or any on another
    (which we cannot see, so it is not taken for dead)."""
    pid, _, host = owner.partition("_")
    if not pid.isdigit():
        return False
    return host != socket.gethostname() or _pid_alive(int(pid))


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
