"""What one Space request does: speech in, N variations out (video, mesh preview, landmarks .npz).

The speech is decoded (or spoken by espeak-ng) and its features computed once, and the face
found once (:meth:`ModaPipeline.prepare_speech`, :func:`prepare_subject`); each variation then
runs :meth:`ModaPipeline.stream` on them with its own seed, which writes the MP4 chunk by chunk;
for the first variation the same chunks also go into a side-by-side "frame | mesh"
MP4. No more than one chunk of frames is held in memory.

Example:
    >>> wav = load_speech(text="Hello there!", voice="en-us")
    >>> results = animate(pipe, "examples/portrait.png", wav, AnimateOptions(seed=3, variations=2),
    ...                   out_dir="/tmp/moda-req")
    >>> results[1].seed, results[0].video_path
    (4, '/tmp/moda-req/moda_seed3.mp4')
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from moda_hub.errors import AudioDecodeError, InvalidParameterError
from moda_hub.face.image import load_image
from moda_hub.face.subject import MAX_IMAGE_SIDE, prepare_subject
from moda_hub.options import SAMPLE_RATE, SEED_RANGE, GenerateOptions, check_speech_source
from moda_hub.speech.audio import load_audio, synthesize_speech
from moda_hub.video import Mp4Writer

from .draw import side_by_side

MAX_VARIATIONS = 4
#: The largest first seed: the last variation's seed (seed + MAX_VARIATIONS - 1) stays in SEED_RANGE.
MAX_SEED = SEED_RANGE[1] - MAX_VARIATIONS
DEFAULTS = GenerateOptions()

STAGE_NAMES = {"audio": "reading the speech", "face": "finding the face",
               "features": "speech features and motion latent", "motion": "sampling motion (stage 1)",
               "composer": "composing the face mesh (stage 2)",
               "render": "motion, face mesh and frames, chunk by chunk", "done": "done"}


@dataclass
class AnimateOptions:
    """Sampling and render controls of one request: the options of :mod:`moda_hub.options`
    (defaults, ranges and meaning there) plus the number of variations."""
    seed: int = DEFAULTS.seed                           # variation i uses seed + i
    temperature: float = DEFAULTS.temperature
    variations: int = 1                                 # 1 to MAX_VARIATIONS videos with consecutive seeds
    fps: int = DEFAULTS.fps
    output_size: Optional[int] = DEFAULTS.output_size
    mouth_scale: float = DEFAULTS.mouth_scale
    head_motion_scale: float = DEFAULTS.head_motion_scale
    blink_rate: float = DEFAULTS.blink_rate
    still: bool = DEFAULTS.still
    face_index: Optional[int] = DEFAULTS.face_index
    expression_scale: float = DEFAULTS.expression_scale

    def check(self) -> None:
        """Raise InvalidParameterError for a seed or a number of variations out of range
        (the pipeline checks the rest)."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) \
                or not SEED_RANGE[0] <= self.seed <= MAX_SEED:
            raise InvalidParameterError(f"seed={self.seed!r} — use a whole number from {SEED_RANGE[0]} to {MAX_SEED}")
        if isinstance(self.variations, bool) or not isinstance(self.variations, (int, np.integer)) \
                or not 1 <= self.variations <= MAX_VARIATIONS:
            raise InvalidParameterError(f"variations={self.variations!r} — use 1 to {MAX_VARIATIONS}")
        if self.face_index is not None and (not isinstance(self.face_index, (int, np.integer))
                                            or self.face_index < 0):
            raise InvalidParameterError(f"face_index={self.face_index!r} — use 0, 1, ... (faces are "
                                        "numbered left to right) or leave it empty for the largest face")


@dataclass
class Variation:
    """One generated video.

    seed: the seed of its generator.
    video_path: the MP4 (H.264 + AAC with the speech).
    mesh_video_path: side-by-side "rendered frame | face mesh" MP4 (first variation only), else None.
    npz_path: landmarks and motion (:func:`save_landmarks_npz`), or None.
    landmarks: (T, 478, 3) float32 image pixels of the portrait.
    motion: "lip" (T, 40, 3), "eye" (T, 60, 3), "head" (T, 7), "torso" (T, 2) (units in moda_hub.models.moda).
    fps: frames per second.
    """
    seed: int
    video_path: str
    mesh_video_path: Optional[str]
    npz_path: Optional[str]
    landmarks: np.ndarray = field(repr=False)
    motion: Dict[str, np.ndarray] = field(repr=False)
    fps: float


def load_speech(audio=None, text: Optional[str] = None, *, voice: str = DEFAULTS.voice,
                speech_rate: int = DEFAULTS.speech_rate, max_seconds: Optional[float] = None) -> np.ndarray:
    """The speech of a request as (N,) float32 mono at 16 kHz: ``audio`` decoded or ``text`` spoken.

    Args:
        audio: a file path, ``(sample_rate, samples)`` tuple or anything
            :func:`moda_hub.speech.audio.load_audio` takes; None when ``text`` is given.
        text (str, optional): spoken by espeak-ng with ``voice`` and ``speech_rate`` (words/min).
        max_seconds (float, optional): longer speech raises InputTooLongError.

    Raises:
        AudioDecodeError: neither given. InvalidParameterError: both given.
        InputTooLongError, TextToSpeechError: from the audio front-end.
    """
    check_speech_source(audio, text, blank_text_is_none=True, none_error=AudioDecodeError,
                        none_message="no speech given — upload or record speech, or type text to speak",
                        both_message="both speech audio and text were given — give one of them "
                                     "(clear the audio or the text)")
    text = text.strip() if isinstance(text, str) else text
    if text:
        return synthesize_speech(text, voice=voice, rate=int(speech_rate), max_seconds=max_seconds)
    return load_audio(audio, SAMPLE_RATE, max_seconds=max_seconds)


def save_landmarks_npz(path: str, landmarks: np.ndarray, motion: Dict[str, np.ndarray], fps: float,
                       seed: Optional[int] = None) -> str:
    """Save landmarks and motion like ``moda generate --landmarks`` does.

    Keys: ``landmarks`` (T, 478, 3) float32 image pixels of the portrait; ``fps`` (float);
    the stage-1 motion ``lip`` (T, 40, 3), ``eye`` (T, 60, 3), ``head`` (T, 7), ``torso`` (T, 2);
    ``seed`` when given. Returns ``path``.
    """
    extra = {} if seed is None else {"seed": np.int64(seed)}
    np.savez_compressed(path, landmarks=np.asarray(landmarks, np.float32), fps=np.float64(fps),
                        **{k: np.asarray(v) for k, v in motion.items()}, **extra)
    return path


def animate(pipe, image, wav: np.ndarray, options: AnimateOptions, out_dir: str, *,
            mesh_preview: bool = True, save_npz: bool = True,
            progress: Optional[Callable[[float, str], None]] = None) -> List[Variation]:
    """Generate ``options.variations`` videos of ``image`` speaking ``wav``.

    Args:
        pipe ([`ModaPipeline`]): the loaded pipeline.
        image: the portrait (path, PIL image or (H, W, 3) array).
        wav ((N,) float32): 16 kHz speech from :func:`load_speech`.
        options ([`AnimateOptions`]): sampling and render controls.
        out_dir (str): existing folder the files go into (``moda_seed{seed}.mp4``,
            ``moda_seed{seed}_mesh.mp4``, ``moda_seed{seed}_landmarks.npz``).
        mesh_preview (bool, default True): also write the side-by-side mesh video of the
            first variation.
        save_npz (bool, default True): write each variation's landmarks .npz.
        progress (callable, optional): ``progress(fraction in [0, 1], description)``.

    Returns:
        list of [`Variation`], seeds ``options.seed``, ``options.seed + 1``, ...

    Raises:
        ModaError subclasses with a message to act on (no face, bad parameters, ...).
    """
    options.check()
    pipe.check_inputs(wav, None, options.fps, "mp4", options.temperature, options.mouth_scale,
                      options.head_motion_scale, options.blink_rate, options.output_size,
                      expression_scale=options.expression_scale)
    # once per request, whatever the number of variations: the face, and the speech's features
    subject = prepare_subject(load_image(image, max_side=MAX_IMAGE_SIDE), face_index=options.face_index)
    speech = pipe.prepare_speech(wav, sample_rate=SAMPLE_RATE, max_audio_seconds=None)  # load_speech applied the limit
    n = int(options.variations)
    results = []
    for i in range(n):
        seed = int(options.seed) + i
        prefix = f"variation {i + 1}/{n}: " if n > 1 else ""

        def report(stage: str, fraction: float, i=i, prefix=prefix) -> None:
            if progress is not None:
                progress(min(1.0, (i + fraction) / n), prefix + STAGE_NAMES.get(stage, stage))

        base = os.path.join(out_dir, f"moda_seed{seed}")
        chunks = pipe.stream(subject, speech, generator=torch.Generator().manual_seed(seed),
                             temperature=options.temperature, mouth_scale=options.mouth_scale,
                             head_motion_scale=options.head_motion_scale, blink_rate=options.blink_rate,
                             still=options.still, fps=options.fps, expression_scale=options.expression_scale,
                             output_size=options.output_size, output_path=base + ".mp4", callback=report)
        mesh_path = base + "_mesh.mp4" if mesh_preview and i == 0 else None
        with torch.no_grad():
            landmarks, motion = _consume(chunks, wav, options.fps, mesh_path)
        npz_path = save_landmarks_npz(base + "_landmarks.npz", landmarks, motion, options.fps,
                                      seed) if save_npz else None
        results.append(Variation(seed, base + ".mp4", mesh_path, npz_path, landmarks, motion,
                                 float(options.fps)))
    if progress is not None:
        progress(1.0, STAGE_NAMES["done"])
    return results


def _consume(chunks, wav: np.ndarray, fps: int, mesh_path: Optional[str]):
    """Run the pipeline's stream to the end (it writes the MP4), writing the side-by-side
    MP4 to ``mesh_path`` on the way (the mesh drawn in frame pixels through the renderer's
    prepared portrait, ``chunk.portrait.to_output_px``; without it the panel shows the frames
    alone). Returns landmarks (T, 478, 3) and motion of the whole clip."""
    landmarks, motion = [], []
    with contextlib.ExitStack() as stack:
        mesh_writer = stack.enter_context(Mp4Writer(mesh_path, fps, audio=wav, sample_rate=SAMPLE_RATE)) \
            if mesh_path else None
        for chunk in chunks:
            landmarks.append(chunk.landmarks)
            motion.append(chunk.motion)
            if mesh_writer is not None:
                to_output_px = getattr(chunk.portrait, "to_output_px", None)
                mesh_writer.write(side_by_side(chunk.frames, to_output_px(chunk.landmarks)
                                               if to_output_px else None))
    return np.concatenate(landmarks), {k: np.concatenate([m[k] for m in motion]) for k in motion[0]}
