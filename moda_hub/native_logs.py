"""Keep third-party native log lines off the terminal.

MediaPipe (absl/glog: ``W0000 00:00:... inference_feedback_manager.cc:114] ...``, ``I0000 ...``,
"WARNING: All log messages before absl::InitializeLog() ...") and TensorFlow Lite ("INFO: Created
TensorFlow Lite XNNPACK delegate for CPU.") write straight to file descriptor 2 from C++, where
Python's logging cannot reach them. :func:`filter_native_stderr` puts a pipe in front of fd 2
and a thread that drops those lines and passes every other byte on (our progress bar, errors and
warnings) unchanged. The ``moda`` command does this unless ``--verbose``; the library never
touches a caller's stderr.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading

# Whole lines that are third-party chatter, not something a user can act on.
NOISE = re.compile(
    rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*"          # absl/glog info and warning lines
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
    rb"|INFO: Initialized TensorFlow Lite runtime\.)\r?$")

_state: dict = {}


def _pump(read_fd: int, out_fd: int) -> None:
    """Copy ``read_fd`` to ``out_fd`` line by line, dropping :data:`NOISE`; a partial line
    (a progress bar's ``\\r`` updates) is passed on as soon as it arrives."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        if pending and b"\r" in pending:          # progress updates: show them now
            head, _, pending = pending.rpartition(b"\r")
            out += head + b"\r"
        if out:
            try:
                os.write(out_fd, out)
            except OSError:
                pass
    if pending and not NOISE.match(pending):
        try:
            os.write(out_fd, pending)
        except OSError:
            pass
    os.close(read_fd)


def filter_native_stderr() -> None:
    """Route this process's fd 2 (and its children's) through the noise filter, until exit.

    Idempotent. Does nothing when fd 2 is closed. At exit (after the helper processes that
    share the pipe are closed) the real stderr is put back and the filter drains."""
    if _state or sys.platform == "win32":
        return
    try:
        original = os.dup(2)
    except OSError:
        return
    read_fd, write_fd = os.pipe()
    sys.stderr.flush()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_pump, args=(read_fd, original), name="moda-stderr-filter",
                              daemon=True)
    thread.start()
    _state.update(original=original, thread=thread)
    atexit.register(restore_stderr)


def restore_stderr(timeout: float = 2.0) -> None:
    """Put the real stderr back on fd 2 and let the filter pass on what is left."""
    if not _state:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_state["original"], 2)        # the pipe's last write end here closes
    _state["thread"].join(timeout)
    os.close(_state["original"])
    _state.clear()
