"""Every setting of the Gradio Space in one dataclass, read from arguments and environment.

Precedence: command-line arguments > ``MODA_*`` variables > ``GRADIO_SERVER_NAME`` /
``GRADIO_SERVER_PORT`` (host and port only) > the defaults below.

Example:
    >>> cfg = SpaceConfig.from_env({"MODA_PORT": "8000", "MODA_CONCURRENCY": "1"})
    >>> cfg.port, cfg.concurrency, cfg.host
    (8000, 1, '127.0.0.1')
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional

from moda_hub.errors import InvalidParameterError
from moda_hub.options import DEFAULT_MODEL


@dataclass(frozen=True)
class SpaceConfig:
    # Address the server listens on: loopback by default; "0.0.0.0" inside the Docker Space.
    host: str = "127.0.0.1"                     # MODA_HOST or GRADIO_SERVER_NAME
    port: int = 7860                            # MODA_PORT or GRADIO_SERVER_PORT
    # Pipeline folder (model_index.json + components) or a Hub repo id.
    model: str = DEFAULT_MODEL                  # MODA_MODEL (default: the shipped pretrained/moda-base)
    # Requests generating at the same time; the rest wait in the queue. Each one keeps about
    # one CPU core busy, so more than the number of cores only makes everybody slower.
    concurrency: int = 2                        # MODA_CONCURRENCY
    # Requests allowed to wait; beyond that new ones are refused with "queue is full".
    max_queue: int = 16                         # MODA_MAX_QUEUE
    # Longest speech accepted (uploaded, recorded or spoken from text), seconds.
    max_audio_seconds: float = 120.0            # MODA_MAX_AUDIO_SECONDS
    # Largest upload (portrait or audio file), megabytes.
    max_upload_mb: float = 20.0                 # MODA_MAX_UPLOAD_MB
    # Where each request gets its own folder for its videos and .npz files.
    output_dir: str = os.path.join(tempfile.gettempdir(), "moda-space")   # MODA_OUTPUT_DIR
    # Request folders older than this are deleted (and gradio's cached copies too), minutes.
    output_ttl_minutes: float = 60.0            # MODA_OUTPUT_TTL_MINUTES
    # At most this many request folders are kept; the oldest go first.
    max_kept_requests: int = 64                 # MODA_MAX_KEPT_REQUESTS
    # torch threads per process (None = torch's default, all cores).
    torch_threads: Optional[int] = None         # MODA_TORCH_THREADS

    _ENV = {"host": "MODA_HOST", "port": "MODA_PORT", "model": "MODA_MODEL",
            "concurrency": "MODA_CONCURRENCY", "max_queue": "MODA_MAX_QUEUE",
            "max_audio_seconds": "MODA_MAX_AUDIO_SECONDS", "max_upload_mb": "MODA_MAX_UPLOAD_MB",
            "output_dir": "MODA_OUTPUT_DIR", "output_ttl_minutes": "MODA_OUTPUT_TTL_MINUTES",
            "max_kept_requests": "MODA_MAX_KEPT_REQUESTS", "torch_threads": "MODA_TORCH_THREADS"}
    _FALLBACK_ENV = {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT"}

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides) -> "SpaceConfig":
        """Settings from ``environ`` (default ``os.environ``); ``overrides`` that are not None
        (command-line arguments) win.

        Raises:
            InvalidParameterError: a variable does not parse or is out of range; the message
                names the variable.
        """
        env = os.environ if environ is None else environ
        values: dict = {}
        for field in dataclasses.fields(cls):
            name = field.name
            if overrides.get(name) is not None:
                values[name] = overrides[name]
                continue
            var = cls._ENV[name]
            raw = env.get(var)
            if raw in (None, "") and name in cls._FALLBACK_ENV:
                var = cls._FALLBACK_ENV[name]
                raw = env.get(var)
            if raw in (None, ""):
                continue
            values[name] = _parse(var, raw, field.type)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown SpaceConfig settings: {sorted(unknown)}")
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Raise InvalidParameterError naming the setting when one is out of range."""
        rules = (("port", 1 <= self.port <= 65535, "a TCP port from 1 to 65535"),
                 ("concurrency", self.concurrency >= 1, "at least 1"),
                 ("max_queue", self.max_queue >= 1, "at least 1"),
                 ("max_audio_seconds", self.max_audio_seconds > 0, "a positive number of seconds"),
                 ("max_upload_mb", self.max_upload_mb > 0, "a positive number of megabytes"),
                 ("output_ttl_minutes", self.output_ttl_minutes > 0, "a positive number of minutes"),
                 ("max_kept_requests", self.max_kept_requests >= 1, "at least 1"),
                 ("torch_threads", self.torch_threads is None or self.torch_threads >= 1,
                  "at least 1 (or unset)"))
        for name, ok, what in rules:
            if not ok:
                raise InvalidParameterError(f"{self._ENV[name]} / {name}={getattr(self, name)!r} "
                                            f"is out of range — use {what}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _parse(var: str, raw: str, kind) -> object:
    kind = str(kind)
    try:
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
    except ValueError:
        expected = "an integer" if "int" in kind else "a number"
        raise InvalidParameterError(f"{var}={raw!r} is not {expected} — fix or unset it") from None
    return raw
