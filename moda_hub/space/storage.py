"""One temporary folder per request under an output root, deleted after a while or when too many.

Only folders this module made are ever deleted: their names start with :data:`PREFIX` and they
hold a :data:`MARKER` file, so pointing the root at a shared place (``/tmp``) is safe.

Example:
    >>> store = OutputStore("/tmp/moda-space", ttl_seconds=3600, max_kept=64)
    >>> folder = store.new_request_dir()      # /tmp/moda-space/req-20250101-120000-1a2b3c4d
"""
from __future__ import annotations

import os
import shutil
import threading
import time
import uuid

from moda_hub.errors import OutputPathError

PREFIX = "req-"
MARKER = ".moda-request"


class OutputStore:
    """Per-request output folders under ``root``.

    Args:
        root (str): the output root; created when missing.
        ttl_seconds (float): request folders older than this are removed.
        max_kept (int): at most this many request folders are kept (the newest).
    """

    def __init__(self, root: str, ttl_seconds: float = 3600.0, max_kept: int = 64):
        self.root = os.path.abspath(root)
        self.ttl_seconds = float(ttl_seconds)
        self.max_kept = max(1, int(max_kept))
        self._lock = threading.Lock()

    def new_request_dir(self) -> str:
        """Clean up, then create and return a fresh, empty folder for one request."""
        self.cleanup()
        name = f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        path = os.path.join(self.root, name)
        try:
            os.makedirs(path)
            with open(os.path.join(path, MARKER), "w"):
                pass
        except OSError as err:
            raise OutputPathError(f"cannot create an output folder in {self.root!r} "
                                  f"({err.strerror}) — set MODA_OUTPUT_DIR to a writable folder") from None
        return path

    def request_dirs(self) -> list[str]:
        """This store's request folders, oldest first."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        dirs = [os.path.join(self.root, n) for n in names if n.startswith(PREFIX)]
        dirs = [d for d in dirs if os.path.isfile(os.path.join(d, MARKER))]
        return sorted(dirs, key=_mtime)

    def cleanup(self, now: float | None = None) -> list[str]:
        """Delete request folders past ``ttl_seconds`` and the oldest beyond ``max_kept - 1``
        (room for the one about to be made). Returns the folders removed."""
        now = time.time() if now is None else now
        with self._lock:
            dirs = self.request_dirs()
            expired = [d for d in dirs if now - _mtime(d) > self.ttl_seconds]
            rest = [d for d in dirs if d not in expired]
            surplus = rest[:max(0, len(rest) - (self.max_kept - 1))]
            removed = []
            for d in expired + surplus:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
            return removed


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(os.path.join(path, MARKER))
    except OSError:
        return 0.0
