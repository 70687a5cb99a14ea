"""espeak-ng through its C API (``libespeak-ng.so.1`` via ctypes): speech samples plus an
exact phoneme / word timeline.

Why the C API and not the ``espeak-ng`` command: the library reports every phoneme and
word as an event carrying the absolute sample index at which it starts in the audio it
returns, so the timeline is exact (no forced alignment, no rounding to milliseconds).

Phoneme alphabet: espeak-ng's own phoneme *mnemonics* (ASCII, Kirshenbaum-like, as printed
by ``espeak-ng -x``, stress marks removed), e.g. ``h @ l oU w 3: l d D I s tS aI``. The mnemonic of a phoneme
depends on the voice's phoneme table (language). Names starting with ``_`` are pauses
(``_`` short, ``_:`` clause pause, ``_!`` glottal break ...); see :func:`is_pause`.
IPA output (``espeakINITIALIZE_PHONEME_IPA``) is not used: it is a process-wide
initialisation option and the mnemonics are easier to map to visemes.

espeak-ng is one global synthesiser per process and is not thread-safe; every call into
the library here holds :data:`LOCK`.

Determinism: espeak-ng carries state from one utterance to the next (pitch-flutter phase,
wave phase) that no API resets, so in one process the same text gives slightly different
samples depending on what was said before. Measured with the wheel's libespeak-ng 1.52
(en-us, de, fr, cmn; the same sentence four times, another one spoken in between): in-process
calls gave four different sample counts per language (e.g. 41697 / 41903 / 41702 / 41898
samples for one German sentence) and different phoneme timings. :func:`speak` therefore
synthesises, by default, in a child forked from a helper process whose espeak-ng has never
spoken: equal inputs give bit-identical samples and timelines in any process and any order
(5-10 ms a call after the helper's ~0.1 s start; an espeak-ng crash on odd input then costs
only that child). ``deterministic=False`` speaks in-process (1-3 ms a call).

The library and its voice data come from the ``espeakng-loader`` wheel (libespeak-ng 1.52,
114 languages): no system package is needed. ``MODA_ESPEAK_LIBRARY`` (and ``MODA_ESPEAK_DATA``)
load another libespeak-ng instead; :func:`library_path` says which one a process uses.

Example::

    >>> from moda_hub.speech.espeak import speak
    >>> res = speak("Hello world", voice="en-us+f3", rate=160)
    >>> res.samples.shape, res.sample_rate       # ((N,), 22050)
    >>> res.phonemes[:2]                          # [('h', 0.012, 0.062), ('@', 0.062, 0.112)]
"""
from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from moda_hub.errors import InputTooLongError, InvalidParameterError, TextToSpeechError
from moda_hub.options import SPEECH_RATE_RANGE
from moda_hub.speech.helper_process import stop_helper

__all__ = [
    "LOCK",
    "MAX_TEXT_CHARS",
    "SpeechResult",
    "Voice",
    "is_pause",
    "library_path",
    "list_variants",
    "list_voices",
    "resolve_voice",
    "speak",
]

#: Default limit on the number of characters :func:`speak` accepts (about 10 minutes of
#: speech at the default rate). Override per call with ``max_chars=`` or change this value.
MAX_TEXT_CHARS = 10_000

#: Process-wide lock around every call into libespeak-ng (global, non-thread-safe state).
LOCK = threading.RLock()

# --- constants from espeak-ng's speak_lib.h -----------------------------------------------
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SENTENCE = 2
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_EVENT_SAMPLERATE = 8
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_EE_OK = 0

#: Seed of espeak-ng's noise generator (breathy and whispering variants), set before every
#: utterance so that equal inputs give equal samples.
RAND_SEED = 1

RATE_RANGE = SPEECH_RATE_RANGE  # words per minute, espeak-ng's accepted range
PITCH_RANGE = (0, 100)  # espeak-ng's 0..100 pitch scale (50 = voice default)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # characters (word events)
        ("audio_position", ctypes.c_int),  # milliseconds
        ("sample", ctypes.c_int),  # absolute sample index in the synthesised audio
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)* then 0
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice (or variant).

    ``identifier`` is the voice file (``"gmw/en-US"``; variants ``"!v/f3"``), ``key`` the
    short name to pass as ``voice=`` (``"en-US"``, variants ``"f3"``), ``languages`` the
    language codes it speaks, best first. ``gender``: "male", "female" or "".
    """

    name: str
    identifier: str
    key: str
    languages: tuple[str, ...]
    gender: str


@dataclass
class SpeechResult:
    """What :func:`speak` returns.

    samples       (N,) float32 in [-1, 1], mono, at ``sample_rate`` Hz (espeak-ng: 22050).
    sample_rate   int, Hz.
    phonemes      list of ``(phoneme, start_s, end_s)`` in seconds from the first sample;
                  espeak mnemonics (see module docstring); sorted, contiguous
                  (end of one = start of the next), all within ``[0, duration]``;
                  zero-length entries dropped; pauses (``_``...) included.
    phoneme_samples  the same timeline as ``(phoneme, start_sample, end_sample)`` ints
                  (exact positions in ``samples``; ``start_s = start_sample / sample_rate``).
    words         list of ``(word, start_s, end_s)``: ``word`` is the slice of ``text`` espeak
                  read as one word (numbers, abbreviations may expand to several spoken words);
                  ``end_s`` is where the next pause or word begins.
    text, voice   the input text (after cleaning) and the resolved voice string.
    extras        ``pitch_range``, ``word_gap``, ``volume`` used, and ``deterministic``
                  (True when synthesised in a pristine forked child).
    """

    samples: np.ndarray
    sample_rate: int
    phonemes: list[tuple[str, float, float]]
    phoneme_samples: list[tuple[str, int, int]]
    words: list[tuple[str, float, float]]
    text: str
    voice: str
    rate: int = 175
    pitch: int = 50
    extras: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Length of ``samples`` in seconds."""
        return len(self.samples) / float(self.sample_rate)


def is_pause(phoneme: str) -> bool:
    """True for espeak's pause pseudo-phonemes (``_``, ``_:``, ``_!`` ...)."""
    return phoneme.startswith("_")


# --- library state -------------------------------------------------------------------------
_lib = None
_sample_rate = 0
_callback_ref = None  # keep the ctypes callback alive for the life of the process
_collect: dict | None = None  # buffers of the synthesis in progress (under LOCK)
_voices_cache: list[Voice] | None = None
_variants_cache: list[Voice] | None = None


def library_path() -> tuple[str, str | None]:
    """``(library, data folder)`` this process loads: the libespeak-ng that the
    ``espeakng-loader`` wheel ships and its voice data, or ``MODA_ESPEAK_LIBRARY`` (with
    ``MODA_ESPEAK_DATA``, else the library's compiled-in data folder) when set."""
    override = os.environ.get("MODA_ESPEAK_LIBRARY")
    if override:
        return override, os.environ.get("MODA_ESPEAK_DATA") or None
    try:
        import espeakng_loader
    except ImportError:
        raise TextToSpeechError(
            "espeakng-loader is not installed (it ships espeak-ng) — `pip install "
            "espeakng-loader`, or pass recorded speech as audio instead.") from None
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _load_library():
    lib_path, data_path = library_path()
    try:
        return ctypes.CDLL(lib_path), data_path
    except OSError as err:
        raise TextToSpeechError(
            f"cannot load espeak-ng from {lib_path!r} ({err}) — reinstall it with `pip install "
            "--force-reinstall espeakng-loader`, or pass recorded speech as audio instead."
        ) from None


def _on_synth(wav, numsamples, events):  # called by espeak-ng inside espeak_Synth
    try:
        col = _collect
        if col is None:
            return 0
        if numsamples > 0 and wav:
            col["chunks"].append(ctypes.string_at(wav, numsamples * 2))
        i = 0
        while events and events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type in (_EVENT_PHONEME, _EVENT_WORD):
                name = bytes(ev.id.string).split(b"\0", 1)[0].decode("ascii", "replace") \
                    if ev.type == _EVENT_PHONEME else ""
                col["events"].append((ev.type, ev.text_position, ev.length, ev.sample, name))
            i += 1
    except Exception:  # never let a Python error unwind through C
        return 0
    return 0


def _ensure_initialised():
    """Load and initialise libespeak-ng once (caller holds LOCK). Returns the library."""
    global _lib, _sample_rate, _callback_ref
    if _lib is not None:
        return _lib
    lib, data_path = _load_library()
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.argtypes = []
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    if hasattr(lib, "espeak_ng_SetRandSeed"):   # 1.52+: its noise generator starts from time()
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_GetCurrentVoice.argtypes = []
    lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                               data_path.encode() if data_path else None,
                               _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
    if sr <= 0:
        raise TextToSpeechError(
            f"espeak-ng could not start (no voice data in {data_path!r}) — reinstall it with "
            "`pip install --force-reinstall espeakng-loader`."
        )
    _callback_ref = _SynthCallback(_on_synth)
    lib.espeak_SetSynthCallback(_callback_ref)
    _sample_rate = int(sr)
    _lib = lib
    return lib


def _languages(ptr: int | None) -> tuple[str, ...]:
    out = []
    if not ptr:
        return ()
    p = ptr
    for _ in range(32):
        prio = ctypes.string_at(p, 1)[0]
        if prio == 0:
            break
        code = ctypes.string_at(p + 1)
        out.append((prio, code.decode("utf-8", "replace")))
        p += 2 + len(code)
    return tuple(code for _, code in sorted(out, key=lambda x: x[0]))


def _list(spec_language: bytes | None) -> list[Voice]:
    lib = _ensure_initialised()
    spec = None
    if spec_language is not None:
        spec = _Voice()
        buf = ctypes.create_string_buffer(spec_language)
        spec.languages = ctypes.cast(buf, ctypes.c_void_p)
        spec._buf = buf
    arr = lib.espeak_ListVoices(ctypes.byref(spec) if spec is not None else None)
    voices = []
    i = 0
    while arr and arr[i]:
        v = arr[i].contents
        ident = (v.identifier or b"").decode("utf-8", "replace")
        voices.append(Voice(
            name=(v.name or b"").decode("utf-8", "replace"),
            identifier=ident,
            key=ident.split("/")[-1],
            languages=_languages(v.languages),
            gender={1: "male", 2: "female"}.get(v.gender, ""),
        ))
        i += 1
    return voices


def list_voices() -> list[Voice]:
    """All espeak-ng voices (languages), sorted by ``key``. Pass ``Voice.key`` as ``voice=``."""
    global _voices_cache
    with LOCK:
        if _voices_cache is None:
            _voices_cache = sorted(_list(None), key=lambda v: v.key.lower())
        return list(_voices_cache)


def list_variants() -> list[Voice]:
    """All voice variants (``m1``..``m7``, ``f1``..``f5``, ``klatt``, ``whisper`` ...).

    Append one to a voice with ``+``: ``"en-us+f3"``. Variant keys are case-sensitive in
    espeak-ng; :func:`resolve_voice` matches them case-insensitively.
    """
    global _variants_cache
    with LOCK:
        if _variants_cache is None:
            _variants_cache = sorted(_list(b"variant"), key=lambda v: v.key.lower())
        return list(_variants_cache)


def _suggest(wanted: str, keys: list[str], n: int = 8) -> str:
    import difflib

    close = difflib.get_close_matches(wanted.lower(), [k.lower() for k in keys], n=n // 2,
                                      cutoff=0.5)
    by_lower = {k.lower(): k for k in keys}
    picks = [by_lower[c] for c in close]
    common = ["en-US", "en", "fr", "de", "es", "it", "cmn", "f3", "m3", "klatt", "whisper"]
    for k in [by_lower[c.lower()] for c in common if c.lower() in by_lower] + keys:
        if len(picks) >= n:
            break
        if k not in picks:
            picks.append(k)
    return ", ".join(picks)


def resolve_voice(voice: str) -> str:
    """Turn a user voice spec into the exact espeak-ng voice string.

    Accepts ``"en-us"``, ``"en-US"``, ``"gmw/en-US"``, ``"English (America)"``, a language
    code spoken by some voice (``"zh"`` -> ``"cmn"``), optionally followed by ``"+variant"``
    (``"en-us+f3"``, ``"en+Alicia"``, case-insensitive). Returns e.g. ``"gmw/en-US+f3"``.
    Raises :class:`InvalidParameterError` naming close or example voices when unknown.
    """
    if not isinstance(voice, str) or not voice.strip():
        raise InvalidParameterError(
            f"voice must be a non-empty string like 'en-us' or 'en-us+f3', got {voice!r}")
    base, _, variant = voice.strip().partition("+")
    base, variant = base.strip(), variant.strip()
    voices = list_voices()
    wanted = base.lower()
    match = None
    for v in voices:
        if wanted in (v.key.lower(), v.identifier.lower(), v.name.lower()):
            match = v
            break
    if match is None:  # a language code: the voice that lists it with the best priority
        for v in voices:
            if wanted in [code.lower() for code in v.languages]:
                match = v
                break
    if match is None:
        raise InvalidParameterError(
            f"unknown espeak-ng voice {base!r} — use one of "
            f"{_suggest(base, [v.key for v in voices])} "
            f"(moda_hub.speech.espeak.list_voices() lists all {len(voices)})")
    resolved = match.identifier
    if variant:
        variants = list_variants()
        vmatch = next((v for v in variants if variant.lower() in (v.key.lower(), v.name.lower())),
                      None)
        if vmatch is None:
            raise InvalidParameterError(
                f"unknown espeak-ng voice variant {variant!r} — use one of "
                f"{_suggest(variant, [v.key for v in variants])} "
                f"(moda_hub.speech.espeak.list_variants() lists all {len(variants)})")
        resolved += "+" + vmatch.key
    return resolved


def _clean_text(text: str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        raise TextToSpeechError(f"text must be a string, got {type(text).__name__} — "
                                "type the words to speak")
    # NUL would end the C string; other control characters become spaces. Lone
    # surrogates (from broken decoding) cannot be encoded to UTF-8: replace them.
    out = "".join(" " if (ord(c) < 32 and c not in "\n\t") or c == "\x7f" else c for c in text)
    return out.encode("utf-8", "replace").decode("utf-8")


def _check_int(name: str, value, lo: int, hi: int) -> int:
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")
    if ivalue != value or not lo <= ivalue <= hi:
        raise InvalidParameterError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return ivalue


def _synth_raw(text: str, resolved_voice: str, params: dict, end_pause: bool) -> dict:
    """Synthesise in this process (holds LOCK). Returns a dict: ``voice_rc``, ``synth_rc``,
    ``sample_rate``, ``pcm`` (int16 little-endian bytes), ``events`` [(type, text_position,
    length, sample, phoneme)] for phoneme and word events."""
    global _collect
    with LOCK:
        lib = _ensure_initialised()
        out = {"voice_rc": lib.espeak_SetVoiceByName(resolved_voice.encode("utf-8")),
               "synth_rc": None, "sample_rate": _sample_rate, "pcm": b"", "events": []}
        if out["voice_rc"] != _EE_OK:
            return out
        for param, key in ((_PARAM_RATE, "rate"), (_PARAM_PITCH, "pitch"),
                           (_PARAM_RANGE, "pitch_range"), (_PARAM_WORDGAP, "word_gap"),
                           (_PARAM_VOLUME, "volume")):
            lib.espeak_SetParameter(param, int(params[key]), 0)
        data = text.encode("utf-8")
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            # breathy variants (f2, f3, whisper, Alicia ...) mix in noise from espeak's random
            # generator, which 1.52 seeds from the clock: the same seed for every utterance
            lib.espeak_ng_SetRandSeed(RAND_SEED)
        _collect = {"chunks": [], "events": []}
        try:
            flags = _CHARS_UTF8 | (_ENDPAUSE if end_pause else 0)
            out["synth_rc"] = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags,
                                               None, None)
            lib.espeak_Synchronize()
            out["pcm"] = b"".join(_collect["chunks"])
            out["events"] = _collect["events"]
        finally:
            _collect = None
    return out


# --- deterministic synthesis in forked children --------------------------------------------
# espeak-ng keeps state from one utterance to the next that no API call resets (the pitch
# "flutter" phase is a function-static in wavegen.c's AdvanceParameters; wave phase, echo
# buffer), so the same text gives slightly different samples depending on what was spoken
# before. For reproducible output a small helper process initialises espeak-ng once, never
# synthesises itself, and forks a child per request: every child starts from the same
# pristine state, so equal inputs give bit-identical samples in any process, in any order.
# An espeak-ng crash on odd input kills only that child.

#: the moda_hub package folder (the helper imports its modules from there, without its __init__)
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER_BOOT = (
    "import sys, types\n"
    "pkg = types.ModuleType('moda_hub'); pkg.__path__ = [sys.argv[1]]\n"
    "sys.modules['moda_hub'] = pkg\n"  # import speech/espeak.py + errors.py only, not the whole package
    "from moda_hub.speech.espeak import _worker_main\n"
    "_worker_main()\n"
)


def _pack(obj: dict, pcm: bytes = b"") -> bytes:
    import json
    import struct

    header = json.dumps(obj).encode("utf-8")
    return struct.pack("<QQ", len(header), len(pcm)) + header + pcm


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    import select
    import time

    parts, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _read_message(fd: int, deadline: float | None = None) -> tuple[dict, bytes]:
    import json
    import struct

    nh, npcm = struct.unpack("<QQ", _read_exact(fd, 16, deadline))
    header = json.loads(_read_exact(fd, nh, deadline).decode("utf-8"))
    return header, _read_exact(fd, npcm, deadline) if npcm else b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _worker_main() -> None:  # pragma: no cover - runs in the helper process
    """Helper loop: read a request, fork, let the child synthesise, relay its answer."""
    inp = sys.stdin.buffer.fileno()
    outp = os.dup(sys.stdout.buffer.fileno())  # the protocol channel; anything the C library
    os.dup2(sys.stderr.fileno(), sys.stdout.buffer.fileno())  # prints goes to stderr instead
    try:
        _ensure_initialised()
        _write_all(outp, _pack({"ready": True, "sample_rate": _sample_rate}))
    except Exception as err:
        _write_all(outp, _pack({"ready": False, "error": str(err)}))
        return
    while True:
        try:
            req, _ = _read_message(inp)
        except (EOFError, OSError):
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: synthesise from the pristine state, answer, exit
            os.close(r)
            try:
                res = _synth_raw(req["text"], req["voice"], req["params"], req["end_pause"])
                pcm = res.pop("pcm")
                _write_all(w, _pack(res, pcm))
            except BaseException as err:
                _write_all(w, _pack({"error": f"{type(err).__name__}: {err}"}))
            finally:
                os._exit(0)
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        data = b"".join(chunks)
        if not data or status != 0:
            why = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
                   else f"exit status {os.WEXITSTATUS(status)}")
            data = _pack({"error": f"espeak-ng crashed ({why})"})
        _write_all(outp, data)


class _Worker:
    """Client side of the helper process (used under LOCK)."""

    def __init__(self):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, _PACKAGE_DIR],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True,
            process_group=0)   # own process group: a terminal's Ctrl-C goes to the parent only
        import time

        try:
            header, _ = _read_message(self.proc.stdout.fileno(), time.monotonic() + 60)
        except TimeoutError:
            self.proc.kill()
            self.proc.wait()
            raise EOFError("the espeak-ng helper did not start within 60 s") from None
        if not header.get("ready"):
            self.close()
            raise TextToSpeechError(header.get("error") or "espeak-ng helper failed to start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(self, req: dict, timeout: float) -> tuple[dict, bytes]:
        import time

        _write_all(self.proc.stdin.fileno(), _pack(req))
        return _read_message(self.proc.stdout.fileno(), time.monotonic() + timeout)

    def close(self) -> None:
        stop_helper(self.proc)


_worker: _Worker | None = None
_worker_unavailable: str | None = None


def _close_worker() -> None:
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


atexit.register(_close_worker)


def _synth_isolated(text: str, resolved_voice: str, params: dict, end_pause: bool) -> dict | None:
    """Synthesise in a forked child of the helper; None when isolation is unavailable."""
    global _worker, _worker_unavailable
    if _worker_unavailable is not None:
        return None
    with LOCK:
        for attempt in range(2):
            try:
                if _worker is None or not _worker.alive():
                    _worker = _Worker()
                req = {"text": text, "voice": resolved_voice, "params": params,
                       "end_pause": end_pause}
                header, pcm = _worker.request(req, timeout=60.0 + len(text) / 50.0)
            except TimeoutError:
                _close_worker_hard()
                raise TextToSpeechError("espeak-ng took too long on this text — shorten it")
            except (EOFError, OSError, ValueError) as err:
                _close_worker_hard()
                if attempt == 1:
                    _worker_unavailable = f"helper process failed: {err}"
                    warnings.warn(f"espeak-ng helper process unavailable ({err}); synthesising "
                                  "in-process, so repeated calls may differ slightly")
                    return None
                continue
            if "error" in header:
                raise TextToSpeechError(f"espeak-ng could not speak this text ({header['error']})"
                                        " — try shorter or plainer text")
            header["pcm"] = pcm
            return header
    return None


def _close_worker_hard() -> None:
    global _worker
    if _worker is not None:
        _worker.proc.kill()
        _worker.proc.wait()
        _worker = None


def speak(
    text: str,
    voice: str = "en-us",
    rate: int = 175,
    pitch: int = 50,
    *,
    pitch_range: int = 50,
    word_gap: int = 0,
    volume: int = 100,
    end_pause: bool = True,
    max_chars: int | None = None,
    deterministic: bool = True,
) -> SpeechResult:
    """Synthesise ``text`` with espeak-ng and return samples plus the phoneme timeline.

    Args:
        text (str): what to say. Any script; characters the voice cannot read are
            spelled or skipped by espeak-ng (never an error by themselves).
        voice (str, default "en-us"): voice, optionally with a variant: ``"en-us+f3"``,
            ``"fr"``, ``"de+m3"``; see :func:`list_voices`, :func:`list_variants`.
        rate (int, default 175): speaking rate in words per minute, 80..450.
        pitch (int, default 50): base pitch on espeak's 0..100 scale.
        pitch_range (int, default 50): intonation range 0..100 (0 = monotone).
        word_gap (int, default 0): extra pause between words, units of 10 ms, 0..100.
        volume (int, default 100): amplitude 0..200.
        end_pause (bool, default True): keep espeak's pause at the end of the text.
        max_chars (int | None): limit on ``len(text)``; ``None`` = :data:`MAX_TEXT_CHARS`.
        deterministic (bool, default True): synthesise in a forked child of a pristine
            helper process so that equal inputs give bit-identical samples whatever was
            spoken before (about +5 ms a call; see the note above ``_WORKER_BOOT``). False
            synthesises in this process: espeak's carried-over state then makes repeated
            calls differ by a few samples. Falls back to False where ``os.fork`` is missing.

    Returns:
        SpeechResult: ``samples`` (N,) float32 at ``sample_rate`` (22050 Hz), ``phonemes``
        ``[(mnemonic, start_s, end_s)]``, ``phoneme_samples``, ``words``.

    Raises:
        TextToSpeechError: empty text, or nothing speakable in it, or espeak-ng missing.
        InputTooLongError: more than ``max_chars`` characters.
        InvalidParameterError: unknown voice/variant or a parameter out of range.

    Example::

        >>> res = speak("Good morning.", voice="en-gb+m3", rate=150, pitch=40)
        >>> [p for p, s, e in res.phonemes]
    """
    text = _clean_text(text)
    if not text.strip():
        raise TextToSpeechError("there is no text to speak — type something to say "
                                "(or pass recorded speech as audio instead)")
    limit = MAX_TEXT_CHARS if max_chars is None else int(max_chars)
    if len(text) > limit:
        raise InputTooLongError(
            f"text has {len(text)} characters, more than the limit of {limit} — shorten it, "
            "split it into several videos, or raise max_chars")
    params = {
        "rate": _check_int("rate", rate, *RATE_RANGE),
        "pitch": _check_int("pitch", pitch, *PITCH_RANGE),
        "pitch_range": _check_int("pitch_range", pitch_range, 0, 100),
        "word_gap": _check_int("word_gap", word_gap, 0, 100),
        "volume": _check_int("volume", volume, 0, 200),
    }
    resolved = resolve_voice(voice)
    raw = None
    if deterministic and hasattr(os, "fork"):
        raw = _synth_isolated(text, resolved, params, end_pause)
    isolated = raw is not None
    if raw is None:
        raw = _synth_raw(text, resolved, params, end_pause)
    if raw["voice_rc"] != _EE_OK:
        raise InvalidParameterError(
            f"espeak-ng could not load voice {voice!r} ({resolved}) — pick another from "
            "moda_hub.speech.espeak.list_voices()")
    if raw["synth_rc"] != _EE_OK:
        raise TextToSpeechError(f"espeak-ng failed to speak the text (error {raw['synth_rc']})"
                                " — try shorter or plainer text")
    sample_rate = int(raw["sample_rate"])
    events = [tuple(ev) for ev in raw["events"]]
    samples = np.frombuffer(raw["pcm"], dtype="<i2").astype(np.float32) / 32768.0
    n = len(samples)
    # libespeak-ng 1.52 prefixes stressed vowels with espeak's stress marks ("'V", ",oU");
    # 1.51 did not: strip them so the alphabet stays the plain mnemonics.
    phoneme_events = [(s, name.lstrip("',%=")) for typ, _, _, s, name in events
                      if typ == _EVENT_PHONEME]
    if n == 0 or not any(not is_pause(name) for _, name in phoneme_events):
        raise TextToSpeechError(
            f"espeak-ng found nothing to say in {text[:40]!r} with voice {voice!r} — use "
            "words in the voice's language (list_voices() shows the languages)")

    # Phoneme timeline: each phoneme lasts until the next event (or the end of the audio).
    starts = [min(max(int(s), 0), n) for s, _ in phoneme_events]
    starts = np.maximum.accumulate(np.asarray(starts, dtype=np.int64)).tolist()
    ends = starts[1:] + [n]
    phoneme_samples = [(name, s, e) for (_, name), s, e in zip(phoneme_events, starts, ends)
                       if e > s]
    phonemes = [(name, s / sample_rate, e / sample_rate) for name, s, e in phoneme_samples]

    # Word timeline: from the word event to the next pause phoneme or the next word.
    # espeak sends one word event per spoken piece: a spelled-out word or a number read as
    # several words repeats the same text span; merge consecutive repeats into one word.
    word_events = []
    for typ, pos, length, s, _ in events:
        if typ != _EVENT_WORD or (word_events and word_events[-1][:2] == (pos, length)):
            continue
        word_events.append((pos, length, min(max(int(s), 0), n)))
    pause_starts = [s for name, s, _ in phoneme_samples if is_pause(name)]
    words = []
    for k, (pos, length, s) in enumerate(word_events):
        nxt = word_events[k + 1][2] if k + 1 < len(word_events) else n
        pauses_after = [p for p in pause_starts if p > s]
        e = min([nxt] + pauses_after[:1])
        word = text[max(pos - 1, 0): max(pos - 1, 0) + max(length, 0)]
        if e > s and word.strip():
            words.append((word, s / sample_rate, e / sample_rate))

    return SpeechResult(samples=samples, sample_rate=sample_rate, phonemes=phonemes,
                        phoneme_samples=phoneme_samples, words=words, text=text,
                        voice=resolved, rate=params["rate"], pitch=params["pitch"],
                        extras={"pitch_range": params["pitch_range"],
                                "word_gap": params["word_gap"], "volume": params["volume"],
                                "deterministic": isolated})
