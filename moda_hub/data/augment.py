"""Audio augmentation: make clean espeak-ng speech sound like a real recording.

The chain (:func:`augment`) follows the path of sound into a microphone: room
reverberation (synthetic exponential-decay impulse response) -> background noise
(white, pink, brown, babble-like or hum, at a random SNR) -> microphone / channel
response (random smooth EQ, telephone band, low-pass or high-pass) -> gain -> sometimes
soft clipping and coarse quantisation (dithered; linear or mu-law). Nothing here shifts
the signal in time: the impulse response's direct path is at sample 0, so phoneme times
stay valid.

Tempo changes happen before this chain, in :func:`resample` (``speed`` > 1 = faster and
higher); the caller must divide its phoneme times by the same ``speed``.

All randomness comes from an explicit ``numpy.random.Generator``. Signals are (N,)
float32 in about [-1, 1] at ``sr`` Hz.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Optional

import numpy as np
from scipy import fft as sfft
from scipy import signal


def resample(wav: np.ndarray, sr_in: int, sr_out: int, speed: float = 1.0) -> np.ndarray:
    """Polyphase resampling from ``sr_in`` to ``sr_out`` Hz, played ``speed`` x faster.

    ``speed`` != 1 changes tempo and pitch together (like a tape); the result lasts
    ``len / sr_in / speed`` seconds. Returns (M,) float32.
    """
    ratio = Fraction(sr_out) / (Fraction(sr_in) * Fraction(speed).limit_denominator(2000))
    ratio = ratio.limit_denominator(1000)
    if ratio == 1:
        return np.asarray(wav, np.float32)
    y = signal.resample_poly(np.asarray(wav, np.float64), ratio.numerator, ratio.denominator)
    return y.astype(np.float32)


def speed_for_resample(sr_in: int, sr_out: int, speed: float) -> float:
    """The exact speed factor :func:`resample` realises for a requested ``speed`` (the
    polyphase ratio is rounded to a fraction); use it to scale the phoneme times."""
    ratio = Fraction(sr_out) / (Fraction(sr_in) * Fraction(speed).limit_denominator(2000))
    ratio = ratio.limit_denominator(1000)
    return float(Fraction(sr_out) / (Fraction(sr_in) * ratio))


# --- noises ------------------------------------------------------------------------------------
def colored_noise(n: int, rng: np.random.Generator, exponent: float = 1.0) -> np.ndarray:
    """(n,) unit-variance noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink,
    2 brown)."""
    m = sfft.next_fast_len(max(n, 2), real=True)
    spec = rng.normal(size=m // 2 + 1) + 1j * rng.normal(size=m // 2 + 1)
    f = np.arange(m // 2 + 1, dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    x = sfft.irfft(spec, m)[:n]
    return (x / (x.std() + 1e-12)).astype(np.float32)


def babble_noise(speech: np.ndarray, sr: int, rng: np.random.Generator,
                 talkers: int = 5) -> np.ndarray:
    """(N,) unit-variance babble-like noise: ``talkers`` copies of ``speech`` (another or
    the same utterance), each reversed or not, circularly shifted and re-coloured, summed.
    Unintelligible, speech-shaped and speech-modulated, like a crowd."""
    n = len(speech)
    out = np.zeros(n, np.float64)
    for _ in range(talkers):
        x = np.asarray(speech, np.float64)
        if rng.random() < 0.5:
            x = x[::-1]
        x = np.roll(x, int(rng.integers(0, max(n, 1))))
        tilt = rng.uniform(-0.5, 0.5)
        b, a = signal.butter(1, rng.uniform(0.1, 0.4), "low" if tilt < 0 else "high")
        out += x + abs(tilt) * signal.lfilter(b, a, x)
    return (out / (out.std() + 1e-12)).astype(np.float32)


def hum(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) unit-variance mains hum: 50 or 60 Hz with a few harmonics."""
    t = np.arange(n) / sr
    f0 = 50.0 if rng.random() < 0.5 else 60.0
    x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
            for k in range(1, 6))
    return (x / (x.std() + 1e-12)).astype(np.float32)


def add_noise(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wav + noise`` with the noise scaled to ``snr_db`` below the speech power (the
    power of the loudest 50 % of 20 ms frames, so pauses do not count)."""
    frames = wav[: len(wav) // 320 * 320].reshape(-1, 320) if len(wav) >= 320 else wav[None]
    power = np.sort(np.mean(np.square(frames, dtype=np.float64), axis=1))
    p_speech = float(power[len(power) // 2:].mean()) + 1e-12
    p_noise = float(np.mean(np.square(noise, dtype=np.float64))) + 1e-12
    scale = np.sqrt(p_speech / p_noise / (10.0 ** (snr_db / 10.0)))
    return (wav + scale * noise).astype(np.float32)


# --- room and channel ------------------------------------------------------------------------
def synthetic_rir(sr: int, rng: np.random.Generator, rt60: float) -> np.ndarray:
    """Room impulse response (L,) float32: direct path 1.0 at sample 0, a few early
    reflections (2-25 ms), and a diffuse tail of exponentially decaying noise that loses
    its high frequencies faster (RT60 ``rt60`` seconds)."""
    L = int(min(1.2 * rt60, 1.0) * sr) + 1
    t = np.arange(L) / sr
    tail = rng.normal(size=L) * np.exp(-6.9 * t / rt60)          # -60 dB at rt60
    b, a = signal.butter(1, rng.uniform(0.15, 0.6))
    tail = 0.5 * tail + 0.5 * signal.lfilter(b, a, tail)
    onset = int(rng.uniform(0.003, 0.01) * sr)
    tail[:onset] = 0.0
    drr_db = rng.uniform(-3.0, 12.0)                              # direct-to-reverberant
    e_tail = float(np.sum(tail ** 2)) + 1e-12
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / e_tail)
    h = tail
    h[0] = 1.0
    for _ in range(int(rng.integers(2, 6))):
        k = int(rng.uniform(0.002, 0.025) * sr)
        if k < L:
            h[k] += rng.uniform(-0.5, 0.5)
    return h.astype(np.float32)


def reverberate(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` and cut to the input's length (no delay: direct path at 0)."""
    y = signal.fftconvolve(wav, rir)[: len(wav)]
    return y.astype(np.float32)


def channel_response(wav: np.ndarray, sr: int, rng: np.random.Generator, kind: str
                     ) -> np.ndarray:
    """Microphone / channel colouring in the frequency domain.

    kind: "eq" (random smooth +-6 dB EQ over log-frequency), "telephone" (300-3400 Hz),
    "lowpass" (cut-off 3-7.5 kHz), "highpass" (cut-off 80-300 Hz, small speakers) or
    "none". Zero-phase, so no delay.
    """
    if kind == "none":
        return wav
    n = len(wav)
    m = sfft.next_fast_len(max(n, 2), real=True)
    f = np.fft.rfftfreq(m, 1.0 / sr)
    logf = np.log2(np.maximum(f, 20.0))
    gain_db = np.zeros_like(f)
    knots = np.linspace(np.log2(20.0), np.log2(sr / 2), 8)
    eq_db = 6.0 if kind == "eq" else 3.0
    gain_db += np.interp(logf, knots, rng.uniform(-eq_db, eq_db, len(knots)))
    if kind == "telephone":
        lo, hi = rng.uniform(250, 400), rng.uniform(3000, 3600)
        gain_db += -40 * (np.clip(np.log2(lo / np.maximum(f, 1.0)), 0, 3) / 1.0)
        gain_db += -40 * np.clip(np.log2(np.maximum(f, 1.0) / hi), 0, 3) / 0.5
    elif kind == "lowpass":
        fc = rng.uniform(3000, 7500)
        gain_db += -24 * np.clip(np.log2(np.maximum(f, 1.0) / fc), 0, 4)
    elif kind == "highpass":
        fc = rng.uniform(80, 300)
        gain_db += -18 * np.clip(np.log2(fc / np.maximum(f, 1.0)), 0, 5)
    gain_db = np.maximum(gain_db, -80)
    y = sfft.irfft(sfft.rfft(wav, m) * 10.0 ** (gain_db / 20.0), m)[:n]
    return y.astype(np.float32)


def quantize(wav: np.ndarray, rng: np.random.Generator) -> tuple:
    """Coarse sample quantisation with TPDF dither (so pauses hiss, never go digitally
    silent): linear 10-14 bit, or 8-bit mu-law as telephone codecs do. Returns
    ``(wav, description)``."""
    x = np.asarray(wav, np.float64)
    dither = rng.random(len(x)) - rng.random(len(x))         # triangular, +-1 LSB
    if rng.random() < 0.3:
        mu = 255.0
        y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
        y = np.round(y * 127.0 + dither) / 127.0
        x = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
        return x.astype(np.float32), "mulaw8"
    bits = int(rng.integers(10, 15))
    q = 2.0 ** (bits - 1)
    return (np.round(x * q + dither) / q).astype(np.float32), f"linear{bits}"


@dataclass
class AugmentConfig:
    """Probabilities and ranges of :func:`augment` (recorded in the corpus manifest)."""
    p_clean: float = 0.12          # leave the utterance untouched (except gain)
    p_reverb: float = 0.5
    rt60: tuple = (0.15, 0.9)      # seconds
    p_noise: float = 0.75
    snr_db: tuple = (3.0, 35.0)
    noise_kinds: tuple = ("white", "pink", "brown", "babble", "babble", "pink", "hum")
    p_floor: float = 0.9           # a quiet room-tone floor (45-65 dB SNR) on top
    channel_kinds: tuple = ("eq", "eq", "eq", "telephone", "lowpass", "highpass", "none")
    gain_db: tuple = (-28.0, -1.0)  # peak level, dBFS
    p_clip: float = 0.05
    p_quantize: float = 0.1


def augment(wav: np.ndarray, sr: int, rng: np.random.Generator,
            config: Optional[AugmentConfig] = None,
            babble_source: Optional[np.ndarray] = None) -> tuple:
    """Apply the recording chain to ``wav`` (N,) float32 at ``sr``. Same length, no delay.

    babble_source: speech to build babble noise from (default: ``wav`` itself).
    Returns ``(wav_out (N,) float32, info dict)``; ``info`` names what was applied.
    """
    cfg = config or AugmentConfig()
    x = np.asarray(wav, np.float32)
    n = len(x)
    info = {}
    if rng.random() >= cfg.p_clean:
        if rng.random() < cfg.p_reverb:
            rt60 = float(rng.uniform(*cfg.rt60))
            x = reverberate(x, synthetic_rir(sr, rng, rt60))
            info["rt60"] = round(rt60, 3)
        if rng.random() < cfg.p_noise:
            kind = str(rng.choice(cfg.noise_kinds))
            snr = float(rng.uniform(*cfg.snr_db))
            if kind == "babble":
                src = babble_source if babble_source is not None and len(babble_source) else x
                src = np.resize(src, n)
                noise = babble_noise(src, sr, rng)
            elif kind == "hum":
                noise = hum(n, sr, rng)
                snr = snr + 10.0
            else:
                noise = colored_noise(n, rng, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
            x = add_noise(x, noise, snr)
            info["noise"], info["snr_db"] = kind, round(snr, 1)
        if rng.random() < cfg.p_floor:
            x = add_noise(x, colored_noise(n, rng, float(rng.uniform(0, 2))),
                          float(rng.uniform(45, 65)))
        kind = str(rng.choice(cfg.channel_kinds))
        x = channel_response(x, sr, rng, kind)
        info["channel"] = kind
    peak = float(np.max(np.abs(x))) + 1e-9
    level = float(rng.uniform(*cfg.gain_db))
    x = x * (10.0 ** (level / 20.0) / peak)
    info["peak_dbfs"] = round(level, 1)
    if rng.random() < cfg.p_clip:
        drive = float(rng.uniform(2.0, 6.0))
        amp = 10.0 ** (level / 20.0)
        x = np.tanh(drive * x / amp) / np.tanh(drive) * amp
        info["clip_drive"] = round(drive, 2)
    if rng.random() < cfg.p_quantize:
        x, info["quantize"] = quantize(x, rng)
    return np.clip(x, -1.0, 1.0).astype(np.float32), info


def config_dict(config: Optional[AugmentConfig] = None) -> dict:
    """The augmentation settings as a JSON-able dict (for the manifest)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(config or AugmentConfig()).items()}
