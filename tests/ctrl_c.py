"""Ctrl-C as a terminal sends it: SIGINT to the command's whole process group."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil


def interrupt_when_helpers_run(cmd, cwd, writing_into, helpers: int = 2, timeout: float = 180.0) -> tuple[int, str]:
    """Start ``cmd`` as a process-group leader (as a shell does for a foreground job), wait until it
    runs ``helpers`` Python helper processes (espeak-ng, phone recognition) and has started writing
    its video into the folder ``writing_into`` (a hidden ``.moda-*`` temporary appears there: past
    every import, mid-work), then send SIGINT to the whole group. Returns (exit status, stderr)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=_foreground_signals)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _python_helpers(proc.pid) >= helpers and os.path.isdir(writing_into) and \
                    any(name.startswith(".moda-") for name in os.listdir(writing_into)):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the command ended before it was interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _foreground_signals() -> None:
    """In the child before exec: Ctrl-C's default action, as a shell gives its foreground job. A
    test run started as a background job (``make test &``, nohup) inherits SIGINT ignored, and a
    child that ignores it would finish its work instead of being interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def helper_count(model_dir) -> int:
    """Python helper processes a text call of the pipeline in ``model_dir`` runs: espeak-ng's, and the
    phone recogniser's when stage 1 hears phones (a stage 1 on the audio encoder runs none)."""
    import json

    with open(os.path.join(model_dir, "moda", "config.json")) as f:
        return 2 if "phones" in json.load(f).get("features", "") else 1


def _python_helpers(pid: int) -> int:
    """How many ``python -c ...`` helper processes run below ``pid`` (gone or zombie ones skipped)."""
    count = 0
    for kid in psutil.Process(pid).children(recursive=True):
        try:
            count += "-c" in kid.cmdline()
        except psutil.Error:
            continue
    return count
