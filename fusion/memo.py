"""Results of pure fold-local fits kept by a digest of every input, so the heads of one bench share them.

Every head of a bench sees the same folds: without this, each would refit the same token PCA and the same
logistic regressions on the same training rows. The key is a digest of the arrays' bytes (never their
identity), so a changed input can never be served a stale fit.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


def digest(*parts: Any) -> str:
    """SHA-1 over the dtype, shape and bytes of each array part and the repr of every other part."""
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            h.update(str((part.dtype, part.shape)).encode())
            h.update(part.tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


_MEMOS: list[Memo] = []


class Memo:
    """A bounded least-recently-used map from a digest to a fit's result."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        _MEMOS.append(self)

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = compute()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


def clear() -> None:
    """Forget every kept fit (a benchmark timing a run as a fresh process would)."""
    for memo in _MEMOS:
        memo._items.clear()
