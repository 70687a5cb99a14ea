"""Stopping the speech helper processes (espeak-ng's and the phone worker's) from the parent side.

Standard library only: the helpers' bare-package bootstraps may import it.
"""
from __future__ import annotations

import subprocess


def stop_helper(proc: subprocess.Popen, timeout: float = 2.0) -> None:
    """Close ``proc``'s stdin (end of requests: the helper's signal to exit), wait up to
    ``timeout`` seconds, then kill it; the process is always reaped (no zombie)."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
