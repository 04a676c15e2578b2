"""The package's exceptions, in one place: every error a user can cause derives from ``FeatstoreError``.

The command line prints these as one line and exit code 1 (``--debug`` shows the traceback); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FeatstoreError(Exception):
    """A user-facing error; the message says what is wrong and where."""


class InputError(FeatstoreError, ValueError):
    """A user-supplied file is malformed; the message names the file, row and column."""


class StoreError(FeatstoreError):
    """A store cannot be opened, or holds something other than what was asked for."""


class AlreadyCommittedError(StoreError):
    """Another run committed the same slide first; ours is dropped and theirs kept."""


class NodeExistsError(StoreError):
    """An object was to be committed where one already is (another run's, or one not to be replaced)."""


class StoreLockedError(StoreError):
    """Another process holds the write lock of an HDF5 store."""


class WeightsError(FeatstoreError):
    """Weights cannot be found or do not fit the encoder."""


class DeviceError(FeatstoreError):
    """The compute device asked for is not there."""


class SlideError(FeatstoreError):
    """A slide cannot be opened or read; the message says which and why."""


class TileReadError(FeatstoreError):
    """A tile could not be read or decoded (truncated file, corrupt data)."""
