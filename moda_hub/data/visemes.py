"""Phonemes -> visemes -> smooth mouth-parameter curves (coarticulation).

A *viseme* here is a target for seven mouth parameters (:data:`MOUTH_PARAMS`), each in
about ``[0, 1]`` (1 = the strongest that shape gets in normal speech):

=================  =====================================================================
``jaw_open``       jaw rotation; 1 = wide open "a" (inner-lip gap about 0.3 x the
                   outer-eye-corner distance, see :mod:`moda_hub.face.rig`)
``lip_round``      rounding / pucker: corners inward, lips forward (o, u, w, sh)
``lip_spread``     spreading: corners outward and back (i, e, s)
``upper_lip_raise`` upper lip up, teeth showing (f, v, sh)
``lower_lip_tuck`` lower lip up and back under the upper teeth (f, v)
``lip_press``      closure: the inner lips brought together (p, b, m, silence)
``lip_part``       lips parted a little without the jaw (t, s, th, vowels)
=================  =====================================================================

Phonemes are espeak-ng mnemonics as :func:`moda_hub.speech.espeak.speak` reports them (``p``,
``aI``, ``@L``, ``_:`` ...); a few IPA symbols are understood too. Diphthongs become two
targets (``aI`` = "a" then "i"). Unknown symbols fall back by their first letter.

Coarticulation is Cohen & Massaro's dominance blending (1993): each phoneme segment ``i``
with target ``T_ip`` for parameter ``p`` has a dominance
``D_ip(t) = a_ip * exp(-(d_i(t) / tau_i)**2)`` where ``d_i(t)`` is the time from ``t`` to
the segment's core (0 inside the central part of the segment, so long pauses and long
vowels hold their shape) and ``tau_i`` differs before (anticipation) and after
(carry-over) the segment. The curve is ``sum_i D_ip T_ip / sum_i D_ip``: smooth, no steps.
Strong dominances (closure of p/b/m, tuck of f/v, rounding of u/w) win over their
neighbours; weak ones (h, k, schwa) take the shape of their context. The blend is
computed on a 240 Hz grid and then low-passed per parameter (:data:`INERTIA_SIGMA`,
20-30 ms: the jaw is the slowest articulator) before it is sampled at the frame centres,
so per-frame changes stay within what real lips do at 30 fps (a 0.1-0.15
outer-eye-corner-distance change of the inner-lip gap per frame at most, as measured on
GRID videos with MediaPipe).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import gaussian_filter1d

from moda_hub.face.rig import MOUTH_PARAMS

P_MOUTH = len(MOUTH_PARAMS)
JAW, ROUND, SPREAD, RAISE, TUCK, PRESS, PART = range(P_MOUTH)


@dataclass(frozen=True)
class Viseme:
    """A mouth target: ``target`` (7,) and ``dominance`` (7,) over :data:`MOUTH_PARAMS`,
    ``tau_before``/``tau_after`` (seconds): how far the dominance reaches before/after the
    segment; ``core``: fraction of the segment that holds the target fully."""
    name: str
    target: Tuple[float, ...]
    dominance: Tuple[float, ...]
    tau_before: float = 0.07
    tau_after: float = 0.06
    core: float = 0.5


def _v(name, jaw=0.0, rnd=0.0, spr=0.0, rai=0.0, tuck=0.0, press=0.0, part=0.0,
       d=(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0), tb=0.07, ta=0.06, core=0.5):
    return Viseme(name, (jaw, rnd, spr, rai, tuck, press, part), tuple(float(x) for x in d),
                  tb, ta, core)


#                 dominance over (jaw, round, spread, raise, tuck, press, part)
VISEMES: Dict[str, Viseme] = {v.name: v for v in [
    # silence: relaxed and closed; holds over the whole pause except its edges
    _v("sil", jaw=0.0, press=0.7, d=(1.5, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5), tb=0.06, ta=0.05,
       core=0.75),
    # bilabials p b m: closure wins over every neighbour
    _v("PBM", jaw=0.06, press=1.0, d=(5.0, 0.3, 0.3, 1.0, 5.0, 120.0, 10.0), tb=0.04, ta=0.035,
       core=0.8),
    # labiodentals f v: lower lip tucked under the upper teeth
    _v("FV", jaw=0.08, rai=0.35, tuck=1.0, d=(2.0, 0.3, 0.3, 4.0, 60.0, 6.0, 3.0), tb=0.045,
       ta=0.04, core=0.7),
    # dental th: lips apart, tongue between the teeth
    _v("TH", jaw=0.16, part=0.5, d=(2.0, 0.3, 0.3, 1.0, 4.0, 6.0, 4.0)),
    # alveolar t d n l
    _v("TDNL", jaw=0.14, part=0.35, d=(1.0, 0.2, 0.2, 0.5, 2.0, 3.0, 1.5)),
    # sibilants s z: teeth nearly closed, lips a little spread and parted
    _v("SZ", jaw=0.07, spr=0.25, part=0.35, d=(3.0, 0.4, 0.6, 0.5, 3.0, 4.0, 3.0)),
    # postalveolars sh zh ch j: rounded, protruded, upper lip raised
    _v("SH", jaw=0.10, rnd=0.65, rai=0.35, part=0.45, d=(2.0, 3.0, 2.0, 2.0, 3.0, 4.0, 3.0),
       tb=0.08),
    # velars k g ng, glottal: take the context's shape
    _v("KG", jaw=0.18, part=0.3, d=(0.8, 0.1, 0.1, 0.3, 2.0, 2.0, 1.0)),
    _v("R", jaw=0.14, rnd=0.45, part=0.3, d=(1.0, 2.0, 1.0, 0.5, 2.0, 3.0, 1.0), tb=0.08),
    _v("W", jaw=0.08, rnd=1.0, part=0.15, d=(2.0, 8.0, 4.0, 0.5, 3.0, 4.0, 2.0), tb=0.09),
    _v("Y", jaw=0.10, spr=0.55, part=0.3, d=(1.5, 1.0, 2.0, 0.5, 2.0, 3.0, 1.0)),
    _v("H", jaw=0.30, part=0.4, d=(0.15, 0.1, 0.1, 0.1, 1.0, 1.0, 0.3)),
    # vowels
    _v("AA", jaw=0.95, spr=0.10, rai=0.10, part=0.6, d=(2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0),
       tb=0.08, ta=0.08),
    _v("AE", jaw=0.75, spr=0.35, rai=0.15, part=0.55, d=(2.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0),
       tb=0.08, ta=0.08),
    _v("EH", jaw=0.50, spr=0.45, part=0.5, d=(1.5, 1.0, 1.2, 1.0, 2.0, 2.0, 1.0), tb=0.08,
       ta=0.08),
    _v("IY", jaw=0.18, spr=0.80, part=0.4, d=(1.5, 1.5, 2.5, 1.0, 2.0, 2.0, 1.0), tb=0.08,
       ta=0.08),
    _v("IH", jaw=0.28, spr=0.50, part=0.45, d=(1.0, 1.0, 1.2, 1.0, 2.0, 2.0, 1.0)),
    _v("AH", jaw=0.55, spr=0.10, part=0.5, d=(1.5, 0.8, 0.8, 1.0, 2.0, 2.0, 1.0), tb=0.08,
       ta=0.08),
    _v("SCHWA", jaw=0.35, part=0.45, d=(0.6, 0.3, 0.3, 0.5, 2.0, 2.0, 0.6)),
    _v("AO", jaw=0.65, rnd=0.60, part=0.5, d=(1.5, 2.5, 2.0, 1.0, 2.0, 2.0, 1.0), tb=0.09,
       ta=0.08),
    _v("OW", jaw=0.45, rnd=0.75, part=0.45, d=(1.5, 3.0, 2.0, 1.0, 2.0, 2.0, 1.0), tb=0.09,
       ta=0.08),
    _v("UW", jaw=0.18, rnd=1.00, part=0.25, d=(1.5, 4.0, 3.0, 1.0, 2.0, 2.0, 1.0), tb=0.11,
       ta=0.09),
    _v("UH", jaw=0.25, rnd=0.60, part=0.35, d=(1.2, 2.0, 1.5, 1.0, 2.0, 2.0, 1.0), tb=0.09),
    _v("ER", jaw=0.35, rnd=0.35, part=0.4, d=(1.2, 1.5, 1.0, 1.0, 2.0, 2.0, 1.0), tb=0.09),
]}
VISEME_NAMES = tuple(VISEMES)
#: Dominance shape ``exp(-(d / (TAU_SCALE * tau)) ** DOMINANCE_EXPONENT)``.
DOMINANCE_EXPONENT = 2.0
TAU_SCALE = 1.0
#: Curves are blended on a grid of this rate (Hz), then low-passed and sampled at frames.
GRID_HZ = 240.0
#: Articulator inertia: Gaussian low-pass std (seconds) per mouth parameter.
INERTIA_SIGMA = (0.030, 0.025, 0.025, 0.020, 0.020, 0.020, 0.020)

# espeak-ng English mnemonics (and some IPA) -> one viseme, or a diphthong's two.
_MAP: Dict[str, Tuple[str, ...]] = {}


def _add(visemes: Tuple[str, ...], *symbols: str):
    for s in symbols:
        _MAP[s] = visemes


_add(("PBM",), "p", "b", "m", "m-", "p2", "b2")
_add(("FV",), "f", "v", "ɸ", "β")
_add(("TH",), "T", "D", "θ", "ð", "D2")
_add(("TDNL",), "t", "d", "n", "l", "t#", "d#", "t[", "d[", "t2", "d2", "n-", "l-", "l/", "l/2",
     "@L", "ɾ", "ɫ", "ʔ", "?", "r/", "tl#")
_add(("SZ",), "s", "z", "z#", "s2", "z/")
_add(("SH",), "S", "Z", "tS", "dZ", "ʃ", "ʒ", "tʃ", "dʒ", "S;", "Z;")
_add(("KG",), "k", "g", "N", "x", "ŋ", "ɡ", "k2", "g2", "C", "ç", "n^", "nj")
_add(("R",), "r", "r-", "ɹ", "ɚ", "R", "r2", "*")
_add(("W",), "w", "w#", "W", "ʍ")
_add(("Y",), "j", ";", "J")
_add(("H",), "h", "h#", "ɦ")
_add(("AA",), "aa", "A:", "A@", "A", "ɑ", "ɑː", "a:", "A#")
_add(("AE",), "a", "a#", "æ", "a2")
_add(("EH",), "E", "E2", "E#", "e", "ɛ", "e@")
_add(("IY",), "i", "i:", "i@3", "iː", "y")
_add(("IH",), "I", "I2", "I#", "ɪ", "IR")
_add(("AH",), "V", "ʌ", "VR")
_add(("SCHWA",), "@", "@2", "@5", "@-", "ə", "3", "ᵻ", "ɐ")
_add(("AO",), "O:", "O@", "O", "O2", "0", "ɔ", "ɔː", "ɒ")
_add(("OW",), "o@", "o", "o:", "Q")
_add(("UW",), "u:", "u", "uː", "U@", "u@")
_add(("UH",), "U", "ʊ", "U2")
_add(("ER",), "3:", "ɜː", "ɝ")
# diphthongs: first target for ~55 % of the segment, then the second
_add(("AA", "IY"), "aI", "aI2", "aI3", "aɪ")
_add(("AA", "IH", "SCHWA"), "aI@")
_add(("AA", "UW"), "aU", "aʊ")
_add(("AA", "UH", "SCHWA"), "aU@")
_add(("EH", "IY"), "eI", "eɪ")
_add(("OW", "UW"), "oU", "əʊ", "oʊ", "@U")
_add(("AO", "IY"), "OI", "ɔɪ")
_add(("IY", "SCHWA"), "i@", "ɪə")
_add(("EH", "SCHWA"), "e@3", "eə")
_add(("UH", "SCHWA"), "ʊə")

_VOWEL_LETTERS = set("aeiouAEIOUV03@")


def phoneme_to_visemes(phoneme: str) -> Tuple[str, ...]:
    """The viseme(s) of one phoneme mnemonic: ``("PBM",)``, ``("AA", "IY")`` for ``aI``.

    Pauses (``_``, ``_:``, ``_!``, empty) are ``("sil",)``; stress and length marks are
    ignored; an unknown symbol falls back by its first character (vowel-like -> SCHWA,
    otherwise KG, a weak context-taking consonant).
    """
    ph = phoneme.strip()
    if not ph or ph.startswith("_") or ph in ("||", "|", "#"):
        return ("sil",)
    ph = ph.lstrip("'ˈˌ,%=")
    if ph in _MAP:
        return _MAP[ph]
    stripped = ph.rstrip("0123456789#[]-;/:ː^")
    if stripped in _MAP:
        return _MAP[stripped]
    if stripped + ":" in _MAP:
        return _MAP[stripped + ":"]
    if stripped and stripped[0] in _MAP and len(_MAP[stripped[0]]) == 1:
        return _MAP[stripped[0]]
    return ("SCHWA",) if ph[:1] in _VOWEL_LETTERS else ("KG",)


@dataclass
class Segment:
    """One viseme segment on the timeline (seconds)."""
    viseme: str
    start: float
    end: float
    phoneme: str


def phonemes_to_segments(phonemes: Sequence[Tuple[str, float, float]],
                         duration: Optional[float] = None) -> List[Segment]:
    """Turn a ``[(phoneme, start_s, end_s)]`` timeline into viseme segments.

    Gaps between phonemes and the time before the first / after the last one (up to
    ``duration`` seconds) become silence. Diphthongs are split (55 % / 45 %, or thirds).
    """
    segs: List[Segment] = []
    t = 0.0
    for ph, s, e in phonemes:
        s, e = float(s), float(e)
        if e <= s:
            continue
        if s > t + 1e-4:
            segs.append(Segment("sil", t, s, "_"))
        vis = phoneme_to_visemes(ph)
        if len(vis) == 1:
            segs.append(Segment(vis[0], s, e, ph))
        else:
            cuts = [0.0, 0.55, 1.0] if len(vis) == 2 else [0.0, 0.4, 0.75, 1.0]
            for k, v in enumerate(vis):
                segs.append(Segment(v, s + cuts[k] * (e - s), s + cuts[k + 1] * (e - s), ph))
        t = max(t, e)
    if duration is not None and duration > t + 1e-4:
        segs.append(Segment("sil", t, float(duration), "_"))
    # merge consecutive silences
    merged: List[Segment] = []
    for sg in segs:
        if merged and sg.viseme == "sil" and merged[-1].viseme == "sil":
            merged[-1].end = sg.end
        else:
            merged.append(sg)
    return merged


@dataclass
class ArticulationStyle:
    """Per-utterance speaking style: multipliers on the viseme targets.

    jaw, rounding, spreading: scale the targets of those parameters (hypo- / hyper-
    articulation); jitter: std of a multiplicative per-segment noise on the targets;
    reach: scales every ``tau`` (longer = more coarticulation, smoother motion).

    What the mouth does in the pauses *inside* speech (leading and trailing silence is always
    the speaker's rest, ``rest_part``). Conversational speakers do not shut the lips at every
    gap: a short gap keeps the shape of the speech around it, and at phrase pauses they often
    breathe in through the mouth, jaw dropped and lips apart.

    hold_gap: seconds; an inner pause shorter than this does not close the lips: it takes
    the mean shape of its two neighbours with a weak dominance (the neighbours' own shapes
    carry across). breath: probability that a longer inner pause is an inhalation through
    the mouth (jaw :data:`BREATH_JAW`, lips parted) instead of the closed rest.
    rest_part: how far apart the lips rest in silence (0 = closed, the table's ``sil``;
    1 = parted, jaw slightly dropped): many people rest with the lips apart.
    All three default to 0 (every pause closes, the table's ``sil``).
    """
    jaw: float = 1.0
    rounding: float = 1.0
    spreading: float = 1.0
    jitter: float = 0.0
    reach: float = 1.0
    hold_gap: float = 0.0
    breath: float = 0.0
    rest_part: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> "ArticulationStyle":
        return cls(jaw=float(rng.uniform(0.75, 1.2)), rounding=float(rng.uniform(0.7, 1.2)),
                   spreading=float(rng.uniform(0.6, 1.2)), jitter=float(rng.uniform(0.03, 0.12)),
                   reach=float(rng.uniform(0.85, 1.2)), hold_gap=float(rng.uniform(*HOLD_GAP_S)),
                   breath=float(rng.uniform(*BREATH_PROB)),
                   rest_part=float(rng.uniform(*REST_PART)) if rng.random() < REST_PARTED_PROB else 0.0)


#: ``ArticulationStyle.random`` ranges: inner pauses shorter than this (s) keep the lips apart ...
HOLD_GAP_S = (0.12, 0.35)
#: ... and this share of the longer ones is a mouth inhalation,
BREATH_PROB = (0.3, 0.8)
#: with the jaw this open (``jaw_open`` units) and the lips parted by ``lip_part`` 0.5.
BREATH_JAW = (0.12, 0.4)
#: Share of speakers whose mouth rests with the lips apart (``rest_part`` > 0), and how far.
REST_PARTED_PROB = 0.5
REST_PART = (0.1, 0.6)


def viseme_curves(phonemes: Sequence[Tuple[str, float, float]], num_frames: int,
                  fps: float = 30.0, style: Optional[ArticulationStyle] = None,
                  rng: Optional[np.random.Generator] = None,
                  frame_times: Optional[np.ndarray] = None) -> np.ndarray:
    """Mouth-parameter curves ``(num_frames, 7)`` float32 over :data:`MOUTH_PARAMS`.

    phonemes: ``[(mnemonic, start_s, end_s)]`` (see :func:`moda_hub.speech.espeak.speak`).
    num_frames, fps: frame ``k`` is sampled at ``(k + 0.5) / fps`` seconds (the centre of
        its display interval, as :func:`moda_hub.speech.audio.frame_times`) unless
        ``frame_times`` (num_frames,) seconds is given.
    style, rng: speaking style and the generator for its per-segment jitter; both optional
        (default: the table's targets exactly).
    Values lie in [0, ~1.2]; silence gives the speaker's rest (the table's relaxed-closed mouth,
    jaw 0, press 0.7, unless ``style.rest_part``), except inner pauses shaped by
    ``style.hold_gap`` / ``style.breath``.

    Example::

        >>> res = moda_hub.speech.espeak.speak("Bob ate a pie.")
        >>> T = moda_hub.speech.audio.num_frames(len(res.samples), res.sample_rate, 30)
        >>> viseme_curves(res.phonemes, T).shape        # (T, 7)
    """
    style = style or ArticulationStyle()
    t = ((np.arange(num_frames, dtype=np.float64) + 0.5) / fps if frame_times is None
         else np.asarray(frame_times, dtype=np.float64))
    duration = max(float(t[-1]) if len(t) else 0.0,
                   float(phonemes[-1][2]) if len(phonemes) else 0.0) + 1.0 / fps
    segs = phonemes_to_segments(phonemes, duration)
    n = len(segs)
    if n == 0 or num_frames == 0:
        out = np.zeros((num_frames, P_MOUTH), np.float32)
        out[:, PRESS] = VISEMES["sil"].target[PRESS]
        return out
    target = np.array([VISEMES[s.viseme].target for s in segs], np.float64)      # (n, P)
    dom = np.array([VISEMES[s.viseme].dominance for s in segs], np.float64)      # (n, P)
    scale = np.ones(P_MOUTH)
    scale[JAW], scale[ROUND], scale[SPREAD] = style.jaw, style.rounding, style.spreading
    target = target * scale
    if style.jitter > 0 and rng is not None:
        target *= np.exp(rng.normal(0.0, style.jitter, size=target.shape))
    is_sil = np.array([s.viseme == "sil" for s in segs])
    rest = _rest_target(style)
    target[is_sil] = rest                           # silence is the speaker's rest, whatever the style
    _inner_pauses(segs, is_sil, target, dom, style, rng)
    target[:, PRESS] = np.clip(target[:, PRESS], 0.0, 1.0)
    start = np.array([s.start for s in segs])
    end = np.array([s.end for s in segs])
    core = np.array([VISEMES[s.viseme].core for s in segs])
    tb = np.array([VISEMES[s.viseme].tau_before for s in segs]) * style.reach * TAU_SCALE
    ta = np.array([VISEMES[s.viseme].tau_after for s in segs]) * style.reach * TAU_SCALE
    mid, half = 0.5 * (start + end), 0.5 * (end - start)
    # silences hold their shape until 80 ms before speech starts (anticipatory opening)
    hold = np.where(is_sil, np.maximum(half - 0.08, core * half), core * half)

    # 1. dominance blending on a fine grid (GRID_HZ), each segment only where it matters
    step = 1.0 / GRID_HZ
    pad = 4.0 * max(INERTIA_SIGMA)
    g0 = min(float(t[0]) if len(t) else 0.0, 0.0) - pad
    g1 = max(float(t[-1]) if len(t) else 0.0, float(end[-1])) + pad
    grid = g0 + step * np.arange(int(np.ceil((g1 - g0) / step)) + 1)
    num = np.zeros((len(grid), P_MOUTH))
    den = np.zeros((len(grid), P_MOUTH))
    reach = hold + 4.0 * np.maximum(tb, ta)        # dominance < exp(-16) beyond this
    lo = np.searchsorted(grid, mid - reach)
    hi = np.searchsorted(grid, mid + reach)
    for k in range(n):
        g = grid[lo[k]:hi[k]]
        dt = g - mid[k]
        d = np.maximum(np.abs(dt) - hold[k], 0.0) / np.where(dt < 0, tb[k], ta[k])
        w = np.exp(-np.power(d, DOMINANCE_EXPONENT))[:, None] * dom[k][None, :]
        num[lo[k]:hi[k]] += w * target[k][None, :]
        den[lo[k]:hi[k]] += w
    eps = 1e-6
    curve = (num + eps * rest) / (den + eps)
    # 2. articulator inertia: each parameter low-passed (jaw heaviest, closure fastest)
    for p in range(P_MOUTH):
        curve[:, p] = gaussian_filter1d(curve[:, p], INERTIA_SIGMA[p] * GRID_HZ, mode="nearest")
    # 3. sample at the frame times
    out = np.empty((len(t), P_MOUTH))
    for p in range(P_MOUTH):
        out[:, p] = np.interp(t, grid, curve[:, p])
    return out.astype(np.float32)


def _rest_target(style: ArticulationStyle) -> np.ndarray:
    """(P,) the mouth at rest: the table's closed ``sil``, or with ``style.rest_part`` of
    1 the lips apart (press 0, part 0.4, jaw 0.1), linearly in between."""
    rest = np.array(VISEMES["sil"].target, np.float64)
    return (1.0 - style.rest_part) * rest + style.rest_part * _parted(jaw=0.1, part=0.4)


def _parted(jaw: float, part: float) -> np.ndarray:
    """(P,) lips apart, nothing else: ``jaw_open`` and ``lip_part`` set, every other parameter 0."""
    shape = np.zeros(P_MOUTH)
    shape[JAW], shape[PART] = jaw, part
    return shape


def _inner_pauses(segs, is_sil, target, dom, style: ArticulationStyle,
                  rng: Optional[np.random.Generator]) -> None:
    """Give the pauses between speech segments their shape (``style.hold_gap``,
    ``style.breath``), in place on ``target`` / ``dom`` (n, P). Needs ``rng`` for breaths."""
    n = len(segs)
    for k in np.flatnonzero(is_sil):
        if k == 0 or k == n - 1:
            continue                                  # before the first / after the last sound
        if segs[k].end - segs[k].start < style.hold_gap:
            target[k] = 0.5 * (target[k - 1] + target[k + 1])
            target[k, PRESS] = 0.0
            dom[k] = 0.05
        elif rng is not None and style.breath > 0 and rng.random() < style.breath:
            target[k] = _parted(jaw=rng.uniform(*BREATH_JAW), part=0.5)
