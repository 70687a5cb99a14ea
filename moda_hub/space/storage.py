"""One temporary folder per request under an output root, deleted after a while or when too many.

A request that fails or is cancelled (its client went away) removes its folder at once
(:meth:`OutputStore.request_dir`); every other folder goes after ``ttl_seconds``, checked when a
request starts and by a background sweep (:meth:`OutputStore.start_sweeping`), so folders do not
outlive the TTL on an idle server. Folders of requests still running are never swept.

Only folders this module made are ever deleted: their names start with :data:`PREFIX` and they
hold a :data:`MARKER` file, so pointing the root at a shared place (``/tmp``) is safe.

Example:
    >>> store = OutputStore("/tmp/moda-space", ttl_seconds=3600, max_kept=64)
    >>> folder = store.new_request_dir()      # /tmp/moda-space/req-20250101-120000-1a2b3c4d
"""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from typing import Iterator

from moda_hub.errors import OutputPathError
from moda_hub.output_paths import check_output_dir

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
        self._active: set = set()          # folders of requests still running: never swept
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    @contextlib.contextmanager
    def request_dir(self) -> Iterator[str]:
        """A fresh folder for one request (see :meth:`new_request_dir`); removed at once when the
        request fails or is cancelled (any exception), kept for ``ttl_seconds`` when it succeeds."""
        path = self.new_request_dir()
        with self._lock:
            self._active.add(path)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._active.discard(path)

    def start_sweeping(self, interval_seconds: float | None = None) -> None:
        """Run :meth:`cleanup` every ``interval_seconds`` (default: a quarter of the TTL, 1 to 60 s) on a
        daemon thread, so expired folders go even when no request comes. Idempotent."""
        if self._sweeper is not None:
            return
        interval = interval_seconds or min(60.0, max(1.0, self.ttl_seconds / 4))

        def sweep():
            while not self._stop.wait(interval):
                try:
                    self.cleanup()
                except OSError:                # a vanished root: try again next time
                    pass

        self._sweeper = threading.Thread(target=sweep, name="moda-output-sweeper", daemon=True)
        self._sweeper.start()

    def stop_sweeping(self) -> None:
        self._stop.set()

    def new_request_dir(self) -> str:
        """Clean up, then create and return a fresh, empty folder for one request."""
        self.cleanup()
        check_output_dir(self.root)        # the same rules as every output: a folder we can write to
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
            dirs = [d for d in self.request_dirs() if d not in self._active]
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
