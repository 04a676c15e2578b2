"""The run's event log (a JSON-lines file beside the store, and the caller's handler) and its stop signal."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from featstore.extract.config import EventHandler
from featstore.store import now_iso, open_beside_store


class _EventLog:
    def __init__(self, store_path: Path, on_event: EventHandler | None):
        self.path = store_path.with_name(store_path.name + ".events.jsonl")
        self.on_event = on_event
        self._lock = threading.Lock()

    def __call__(self, event: str, **data: Any) -> None:
        record = {"time": now_iso(), "event": event, "pid": os.getpid(), **data}
        with self._lock:
            with os.fdopen(open_beside_store(self.path, os.O_WRONLY | os.O_APPEND), "a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
            if self.on_event is not None:
                self.on_event(record)

    def progress(self, **data: Any) -> None:
        """Progress goes to the handler (a progress bar) only: one log line per batch would swamp the log."""
        if self.on_event is not None:
            self.on_event({"event": "progress", **data})


class _StopRun(Exception):
    pass
