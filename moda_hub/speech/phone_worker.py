"""Phone recognition in a helper process, so that it runs beside rendering.

pocketsphinx holds the GIL for the whole decode (measured: a second Python thread runs 7x
slower while it decodes, and two decoding threads take as long as one after the other), so a
thread cannot overlap it with anything. :class:`PhoneWorker` keeps one helper interpreter that
imports only ``moda_hub.speech.phones`` (numpy, scipy, pocketsphinx: not torch, diffusers or the
user's ``__main__``) and answers :func:`moda_hub.speech.phones.phone_stream` requests in
order through two pipes. The same audio gives the same rows in either process (a fresh decoder
per request, see ``moda_hub.speech.phones._decoder``).

``MODA_PHONE_WORKER=0`` turns the helper off (everything runs in the calling process). A helper
that cannot start or dies makes its requests fail with :class:`PhoneWorkerError`; callers then
recognise in-process (``moda_hub.speech.features.FeatureTable`` does), so a result never depends on it.

Example:
    >>> worker = shared_worker()                           # None when turned off or unavailable
    >>> future = worker.submit(wav, 16000, 30)             # returns at once
    >>> future.result()                                    # (T, 14) float32 phone stream
"""
from __future__ import annotations

import atexit
import itertools
import os
import queue
import struct
import subprocess
import sys
import threading
from concurrent.futures import Future, InvalidStateError
from typing import Optional

import numpy as np

from moda_hub.speech.helper_process import stop_helper

PHONE_WORKER_ENV = "MODA_PHONE_WORKER"

# The helper: a bare ``moda_hub`` package object (its __init__ imports torch and diffusers, ~10 s)
# so that ``moda_hub.speech.phones`` loads alone. Protocol (no pickle: plain structs + float32 arrays) on
# the inherited stdin / stdout; anything else the libraries print to fd 1 goes to stderr.
#   request:  <QIdQ rid, sample_rate, fps, n> + n float32 samples
#   response: <QIII rid, status, a, b> + (status 0) a x b float32 rows | (1) a bytes of error text
#             | (2, rid 0) ready, nothing follows
_REQUEST = struct.Struct("<QIdQ")
_RESPONSE = struct.Struct("<QIII")
_BOOTSTRAP = r"""
import os, struct, sys, types
import numpy as np
out = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
pkg = types.ModuleType("moda_hub"); pkg.__path__ = [sys.argv[1]]; sys.modules["moda_hub"] = pkg
from moda_hub.speech.phones import phone_stream
REQ, RES = struct.Struct("<QIdQ"), struct.Struct("<QIII")
inp = sys.stdin.buffer
def read(n):
    buf = inp.read(n)
    if len(buf) < n:
        raise EOFError
    return buf
out.write(RES.pack(0, 2, 0, 0)); out.flush()
while True:
    try:
        rid, sr, fps, n = REQ.unpack(read(REQ.size))
        wav = np.frombuffer(read(4 * n), "<f4")
    except EOFError:
        break
    try:
        rows = np.ascontiguousarray(phone_stream(wav, sr, fps), "<f4")
        out.write(RES.pack(rid, 0, rows.shape[0], rows.shape[1])); out.write(rows.tobytes())
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")
        out.write(RES.pack(rid, 1, len(msg), 0)); out.write(msg)
    out.flush()
"""


class PhoneWorkerError(RuntimeError):
    """The helper process is not there (could not start, died, or was closed)."""


class PhoneWorker:
    """One helper process for :func:`moda_hub.speech.phones.phone_stream`; thread-safe.

    Requests are answered in submission order. A request whose future was cancelled before the
    helper took it is skipped, so a caller may take work back (``future.cancel()`` returns True)
    and do it itself.
    """

    def __init__(self):
        pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # moda_hub/
        self._proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, pkg_dir],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, close_fds=True,
                                      process_group=0)   # own group: a terminal's Ctrl-C reaches the parent only
        self._owner = os.getpid()           # a forked copy of this object is not usable there
        self._ids = itertools.count()
        self._pending: dict = {}
        self._lock = threading.Lock()
        self._todo: "queue.Queue" = queue.Queue()
        self._dead: Optional[str] = None
        self._ready = threading.Event()     # the helper has imported everything: send work then
        self.answered = 0                   # requests the helper has answered
        self._writer = threading.Thread(target=self._write_loop, name="moda-phones-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="moda-phones-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def alive(self) -> bool:
        """The helper is running and this is the process that started it (after a fork the
        copy has no threads and must not touch the pipes)."""
        return self._dead is None and self._owner == os.getpid()

    def submit(self, wav: np.ndarray, sample_rate: int, fps: float) -> Future:
        """Queue one clip: ``wav`` (N,) float32 mono at ``sample_rate`` Hz, frames at ``fps``.
        Returns a Future of the ``(T, 14)`` float32 phone stream (or PhoneWorkerError)."""
        fut: Future = Future()
        if np.ndim(wav) != 1:                 # the caller's own (in-process) call gives the error
            fut.set_exception(PhoneWorkerError(f"not mono samples: shape {np.shape(wav)}"))
            return fut
        with self._lock:
            if not self.alive:
                fut.set_exception(PhoneWorkerError(self._dead or "a phone worker of another process"))
                return fut
            rid = next(self._ids)
            self._pending[rid] = fut
        self._todo.put((rid, fut, np.ascontiguousarray(wav, "<f4"), int(sample_rate), float(fps)))
        return fut

    def close(self) -> None:
        """Stop the helper; pending requests fail with PhoneWorkerError."""
        self._fail("the phone worker was closed")
        self._ready.set()
        self._todo.put(None)
        stop_helper(self._proc)

    # ------------------------------------------------------------------ threads
    def _write_loop(self) -> None:
        # until the helper is ready, requests stay PENDING here, so a caller that needs one
        # sooner takes it back (``cancel()``) instead of waiting for the helper to start
        self._ready.wait()
        while True:
            item = self._todo.get()
            if item is None:
                return
            rid, fut, wav, sr, fps = item
            if self._dead is not None:
                continue
            try:
                taken_back = fut.done() or not fut.set_running_or_notify_cancel()   # cancelled / failed
            except RuntimeError:                                 # failed by _fail meanwhile
                taken_back = True
            if taken_back:
                with self._lock:
                    self._pending.pop(rid, None)
                continue
            try:
                self._proc.stdin.write(_REQUEST.pack(rid, sr, fps, len(wav)))
                self._proc.stdin.write(wav.data)
                self._proc.stdin.flush()
            except (OSError, ValueError):
                self._fail("the phone worker process stopped")
                return

    def _read_loop(self) -> None:
        out = self._proc.stdout

        def read(n: int) -> bytes:
            buf = out.read(n)
            if len(buf) < n:
                raise EOFError
            return buf

        try:
            if _RESPONSE.unpack(read(_RESPONSE.size))[1] != 2:
                raise EOFError
            self._ready.set()
            while True:
                rid, status, a, b = _RESPONSE.unpack(read(_RESPONSE.size))
                if status == 0:
                    result = np.frombuffer(bytearray(read(4 * a * b)), "<f4").reshape(a, b)
                else:
                    error = read(a).decode("utf-8", "replace")
                self.answered += 1
                with self._lock:
                    fut = self._pending.pop(rid, None)
                if fut is None:
                    continue
                if status == 0:
                    fut.set_result(result)
                else:
                    fut.set_exception(PhoneWorkerError(f"phone recognition failed in the worker: {error}"))
        except (EOFError, OSError, ValueError, struct.error):
            self._fail("the phone worker process stopped")
            self._ready.set()                                    # let the writer see it and end

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = reason
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            try:
                fut.set_exception(PhoneWorkerError(reason))
            except InvalidStateError:                            # cancelled or answered meanwhile
                pass


_shared: Optional[PhoneWorker] = None
_shared_lock = threading.Lock()


def worker_enabled() -> bool:
    """False when ``$MODA_PHONE_WORKER`` is 0/false/off, or the machine has one core (nothing
    would run beside it)."""
    value = os.environ.get(PHONE_WORKER_ENV, "").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    return value in ("1", "true", "on", "yes") or (os.cpu_count() or 1) > 1


def shared_worker() -> Optional[PhoneWorker]:
    """The process-wide helper, started on first use (restarted if it died); None when
    :func:`worker_enabled` is False or the helper cannot be started."""
    global _shared
    if not worker_enabled():
        return None
    with _shared_lock:
        if _shared is None or not _shared.alive:
            try:
                _shared = PhoneWorker()
            except OSError:
                return None
        return _shared


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared._owner == os.getpid():
        _shared.close()
