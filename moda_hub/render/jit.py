"""Compiled per-pixel kernels, built on first use.

``@compiled`` wraps a *builder*: a function that imports numba and returns an ``njit``-ed
kernel. The kernel is built the first time it is called (numba's import and the load of the
cached machine code take ~1.5 s, so ``import moda_hub`` stays fast), once per process,
thread-safe, and cached on disk (``cache=True``: next to the source, or ``NUMBA_CACHE_DIR``).
Kernels are compiled with ``nogil=True`` so the renderer's threads run them in parallel.
"""
from __future__ import annotations

import threading
from typing import Callable, List

_lock = threading.Lock()
_all: List["compiled"] = []


class compiled:
    """A lazily built numba kernel: ``kernel = compiled(builder)``; ``kernel(*args)`` runs it."""

    def __init__(self, builder: Callable[[], Callable]):
        self._builder = builder
        self._fn = None
        self.__doc__ = builder.__doc__
        _all.append(self)

    def get(self) -> Callable:
        if self._fn is None:
            with _lock:
                if self._fn is None:
                    self._fn = self._builder()
        return self._fn

    def __call__(self, *args):
        return self.get()(*args)


def warm_up() -> None:
    """Build (or load from the cache) every kernel now."""
    for kernel in list(_all):
        kernel.get()


def warm_up_in_background() -> None:
    """Build the kernels on a daemon thread: a renderer made at start-up is ready by its first frame."""
    if any(k._fn is None for k in _all):
        threading.Thread(target=warm_up, name="moda-jit-warm-up", daemon=True).start()
