"""ModaPipeline: one portrait + speech -> a talking-portrait video.

A thin orchestrator in the diffusers style: every step below calls a component or a
front-end; the maths lives there.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from .errors import InvalidParameterError, WeightsError
from .face.expression import lip_closure, relax_expression
from .face.lip_contact import keep_lips_apart
from .face.pose import apply_head_offset, from_canonical, torso_to_px
from .face.subject import Subject, prepare_subject
from .models.audio_encoder import WhisperTinyEncoder
from .models.composer import FacialComposer
from .models.moda import ModaModel, blink_condition
from .motion.blinks import apply_blinks, closed_eye_offsets, sample_blink_closure, speech_pauses
from .motion.controls import apply_controls, resample_motion, source_range
from .options import OPTIONS, SAMPLE_RATE, GenerateOptions, check_speech_source
from .output_paths import VIDEO, check_output_file
from .render.crop import default_output_size
from .render.warp import PreparedPortrait
from .speech.audio import load_audio, synthesize_speech
from .speech.features import ENCODER_KINDS, FeatureTable, PreparedSpeech, start_helpers
from .video import Mp4Writer
from .weights import load_pipeline, resolve_pipeline_folder

#: Every option's default (:class:`moda_hub.options.GenerateOptions`): the signatures below read it.
DEFAULTS = GenerateOptions()
OUTPUT_TYPES = ("mp4", "np", "pil", "landmarks")
#: Longest speech a call accepts by default, seconds (``max_audio_seconds=None`` lifts it).
#: Checked before any work (from the file header for audio files).
MAX_AUDIO_SECONDS = 600.0
#: Bytes of output frames one chunk may hold. A chunk is rendered, then queued to the encoder
#: while the next one renders, so about three chunks are in flight: 32 frames of a 512 x 512
#: crop (24 MB); with full-image output of a 12-megapixel photo (36 MB a frame) 1 frame a chunk
#: from :meth:`ModaPipeline.stream`, not 32 (1.2 GB a chunk), and 4 frames of the region around
#: the face (1978 x 946 px) when only the MP4 is made (the writer adds the rest of the photo).
CHUNK_BYTES = 24 * 2 ** 20
#: A clip whose loudest sample is below this (-60 dBFS) is silence: there is nothing for the lips
#: to follow (its per-utterance normalised features would read as "average speech"), so the
#: mouth keeps the portrait's shape.
SILENCE_PEAK = 1e-3


@dataclass
class ModaPipelineOutput(BaseOutput):
    """Result of :class:`ModaPipeline`.

    video_path: the MP4 (H.264 + AAC, the input speech) when ``output_type="mp4"``, else None.
    frames: (T, H, W, 3) uint8 for "np", a list of PIL images for "pil", else None.
    landmarks: (T, 478, 3) float32, image pixels of the portrait — always filled.
    motion: stage-1 motion at the output fps after controls: "lip" (T, 40, 3), "eye" (T, 60, 3),
        "head" (T, 7), "torso" (T, 2) (units in ``moda_hub.models.moda``).
    fps: frames per second of the result.
    audio: (N,) float32 speech at 16 kHz that the video carries.
    """
    video_path: Optional[str]
    frames: Optional[Union[np.ndarray, List[PIL.Image.Image]]]
    landmarks: np.ndarray
    motion: Dict[str, np.ndarray]
    fps: float
    audio: np.ndarray


@dataclass
class ModaStreamChunk:
    """One chunk of :meth:`ModaPipeline.stream`.

    start: index of the chunk's first frame in the whole video.
    frames: (t, H, W, 3) uint8. landmarks: (t, 478, 3) float32 image pixels.
    motion: the chunk's motion (as in :class:`ModaPipelineOutput`). fps: frame rate.
    portrait: the renderer's prepared portrait the frames come from (e.g. its ``to_output_px``
    maps portrait pixels to frame pixels), None when not rendering.
    """
    start: int
    frames: np.ndarray
    landmarks: np.ndarray
    motion: Dict[str, np.ndarray]
    fps: float
    portrait: object = None


@dataclass
class _Session:
    """What one call computes before any frame: subject, speech, features, latent, controls."""
    subject: Subject
    wav: np.ndarray                   # (N,) float32, 16 kHz
    features: FeatureTable            # (T_model, F) at the model's fps, phones filled on demand
    cond: torch.Tensor                # (1434,) canonical units
    extra: torch.Tensor               # (1,) ModaModel's blink condition
    latent: torch.Tensor              # (1, L, Z) ProbAttn latent for the whole clip
    num_frames: int                   # output frames, round(duration * fps)
    fps: int
    controls: dict
    blink_closure: np.ndarray         # (T_model, 2) eyelid closure of the sampled blinks
    closed_eye: np.ndarray            # (60, 3) the subject's eye offsets with closed lids
    windows: dict = field(default_factory=dict)   # stage-1 window cache across chunks


class ModaPipeline(DiffusionPipeline):
    r"""Audio-driven portrait animation (MODA, ICCV 2023) with a swappable renderer.

    Components:
        audio_encoder ([`WhisperTinyEncoder`], optional): speech -> 50 Hz states (Whisper tiny's
            encoder) that stage 1 hears when its ``features`` are ``"whisper-tiny"``; pipelines
            whose stage 1 hears log-mel + phones have none.
        moda ([`ModaModel`]): stage 1, audio + subject -> lip, eye, head and torso motion.
        composer ([`FacialComposer`]): stage 2, lip + eye motion -> dense 478-point mesh.
        renderer ([`WarpRenderer`] or a trained NeuralRenderer): stage 3, mesh + portrait -> frames.

    Example:
        >>> import torch
        >>> from moda_hub import ModaPipeline
        >>> pipe = ModaPipeline.from_pretrained("pretrained/moda-base")
        >>> out = pipe(image="examples/portrait.png", text="Hello there!",
        ...            generator=torch.Generator().manual_seed(0), output_path="hello.mp4")
        >>> out.video_path
        'hello.mp4'
    """

    model_cpu_offload_seq = "audio_encoder->moda->composer"
    _optional_components = ["audio_encoder"]

    def __init__(self, moda: ModaModel, composer: FacialComposer, renderer,
                 audio_encoder: Optional[WhisperTinyEncoder] = None):
        super().__init__()
        features = getattr(moda.config, "features", "")
        if features in ENCODER_KINDS and audio_encoder is None:
            raise WeightsError(f"stage 1 hears {features!r} states but the pipeline has no audio_encoder "
                               "component — load the whole pipeline folder (its audio_encoder/ sub-folder)")
        if features in ENCODER_KINDS:
            trained = moda.config.audio_state_layer          # None: trained before it was recorded, the last
            trained = audio_encoder.config.encoder_layers if trained is None else int(trained)
            if audio_encoder.states_layer() != trained:
                raise WeightsError(f"stage 1 was trained on the audio encoder's layer-{trained} states but this "
                                   f"audio_encoder gives layer {audio_encoder.states_layer()} — set its config's "
                                   f"state_layer to {trained}, or load the pipeline folder they were saved in")
        self.register_modules(moda=moda, composer=composer, renderer=renderer, audio_encoder=audio_encoder)
        start_helpers(features)      # e.g. the phone-recognition helper, so it is ready by the first call

    # ------------------------------------------------------------------ Hub
    model_card: Optional[str] = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a pipeline folder (or Hub repo id): model_index.json, one folder per component
        (config json + safetensors). Never unpickles (``use_safetensors=True``). The folder's
        README.md model card is kept and written again by :meth:`save_pretrained`.

        ``renderer=`` swaps stage 3 for a renderer object with the same ``prepare`` / ``render``
        methods, e.g. a person's trained ``NeuralRenderer`` (loaded, and checked, on its own):
        ``ModaPipeline.from_pretrained(base, renderer=NeuralRenderer.from_pretrained(folder))``.

        Every problem with the folder or its weights (missing file or tensor, corrupted or
        truncated safetensors, wrong shapes, NaN) raises ``WeightsError`` naming the file —
        never a pipeline with random weights (checks in :mod:`moda_hub.weights`)."""
        renderer = kwargs.pop("renderer", None)
        folder = resolve_pipeline_folder(pretrained_model_name_or_path, **kwargs)
        pipe = load_pipeline(cls, super().from_pretrained, folder, **kwargs)
        if renderer is not None:          # a swap of any class (diffusers' check wants the folder's)
            pipe.register_modules(renderer=renderer)
        card = os.path.join(str(folder), "README.md")
        if os.path.isfile(card):
            with open(card, encoding="utf-8") as f:
                pipe.model_card = f.read()
        return pipe

    def save_pretrained(self, save_directory, model_card: Optional[str] = None, **kwargs):
        """Write model_index.json, each component (safetensors weights) and the model card
        (``model_card`` text, else the one loaded with the pipeline) as README.md."""
        kwargs.setdefault("safe_serialization", True)
        super().save_pretrained(save_directory, **kwargs)
        _drop_local_paths(save_directory)
        card = model_card if model_card is not None else self.model_card
        if card:
            with open(os.path.join(save_directory, "README.md"), "w", encoding="utf-8") as f:
                f.write(card)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_inputs(audio, text, fps, output_type, temperature, mouth_scale, head_motion_scale,
                     blink_rate, output_size, *, still=DEFAULTS.still, face_index=DEFAULTS.face_index, generator=None,
                     max_audio_seconds=MAX_AUDIO_SECONDS, speech_rate=DEFAULTS.speech_rate, sample_rate=None,
                     voice=DEFAULTS.voice, expression_scale=DEFAULTS.expression_scale):
        """Check every parameter of a call before any work; raise InvalidParameterError naming the
        parameter, the value, the type or range expected and what to do.

        Numbers may be Python or numpy scalars (``np.float32(1.0)``); strings, booleans and other
        types where a number is expected are refused (``still="no"`` would otherwise read as True).
        ``generator`` is None, a ``torch.Generator`` or a list of exactly one. Ranges and choices
        are :mod:`moda_hub.options`'."""
        check_speech_source(audio, text)
        if text is not None and not isinstance(text, str):
            raise InvalidParameterError(f"text is a {type(text).__name__} — pass the words to speak as a str")
        if not _is_whole(fps) or int(fps) not in OPTIONS["fps"].choices:
            raise InvalidParameterError(f"fps={fps!r} is not supported — use 25 or 30 (24, 50 and 60 also work)"
                                        + _type_hint(fps, "a whole number"))
        if not isinstance(output_type, str) or output_type not in OUTPUT_TYPES:
            raise InvalidParameterError(f"output_type={output_type!r} — use one of {', '.join(OUTPUT_TYPES)}")
        for name, value in (("temperature", temperature), ("mouth_scale", mouth_scale),
                            ("head_motion_scale", head_motion_scale), ("blink_rate", blink_rate),
                            ("expression_scale", expression_scale)):
            lo, hi = OPTIONS[name].range
            if not _is_number(value):
                raise InvalidParameterError(f"{name}={value!r} is a {type(value).__name__} — pass a number "
                                            f"(int or float) from {lo:g} to {hi}")
            if not np.isfinite(value) or not lo <= value <= hi:
                raise InvalidParameterError(f"{name}={value!r} is out of range — use a number from {lo:g} to {hi}")
        if output_size is not None and (not _is_whole(output_size)
                                        or int(output_size) not in OPTIONS["output_size"].choices):
            raise InvalidParameterError(f"output_size={output_size!r} — use 256 or 512 (a face crop) or 0 (the full "
                                        "image)" + _type_hint(output_size, "a whole number"))
        if not isinstance(still, (bool, np.bool_)):
            raise InvalidParameterError(f"still={still!r} is a {type(still).__name__} — pass True (head and torso "
                                        "still) or False")
        if face_index is not None and not _is_whole(face_index):
            raise InvalidParameterError(f"face_index={face_index!r} is a {type(face_index).__name__} — pass a "
                                        "whole number (0 = the leftmost face) or None for the largest face")
        if max_audio_seconds is not None and (not _is_number(max_audio_seconds) or not max_audio_seconds > 0):
            raise InvalidParameterError(f"max_audio_seconds={max_audio_seconds!r} — pass a positive number of "
                                        "seconds, or None for no limit" + _type_hint(max_audio_seconds, "a number"))
        if sample_rate is not None and (not _is_whole(sample_rate) or not sample_rate > 0):
            raise InvalidParameterError(f"sample_rate={sample_rate!r} — pass the audio array's rate in Hz as a "
                                        "whole number, e.g. 16000" + _type_hint(sample_rate, "a whole number"))
        if text is not None:
            lo, hi = OPTIONS["speech_rate"].range
            if not _is_whole(speech_rate) or not lo <= speech_rate <= hi:
                raise InvalidParameterError(f"speech_rate={speech_rate!r} is out of range — use a whole number of "
                                            f"words per minute from {lo} to {hi} (default {DEFAULTS.speech_rate})"
                                            + _type_hint(speech_rate, "a whole number"))
            if not isinstance(voice, str):
                raise InvalidParameterError(f"voice={voice!r} is a {type(voice).__name__} — pass an espeak-ng "
                                            "voice name such as 'en-us'")
        _one_generator(generator)

    def _check_call(self, image, audio, text, output_type, output_size, kwargs) -> None:
        """:meth:`check_inputs` with a call's keyword arguments (``kwargs`` as :meth:`prepare` takes them)."""
        if image is None:
            raise InvalidParameterError("no portrait given — pass `image` (a file path, PIL image or array)")
        # an option the call leaves out has its default (moda_hub.options)
        get = {**dataclasses.asdict(DEFAULTS), "max_audio_seconds": MAX_AUDIO_SECONDS, **kwargs}.get
        self.check_inputs(audio, text, get("fps"), output_type, get("temperature"), get("mouth_scale"),
                          get("head_motion_scale"), get("blink_rate"), output_size, still=get("still"),
                          face_index=get("face_index"), generator=get("generator"),
                          max_audio_seconds=get("max_audio_seconds"), speech_rate=get("speech_rate"),
                          sample_rate=get("sample_rate"), voice=get("voice"),
                          expression_scale=get("expression_scale"))

    # ------------------------------------------------------------------ steps
    def prepare_speech(self, audio=None, text: Optional[str] = None, *, sample_rate: Optional[int] = None,
                       voice: str = DEFAULTS.voice, speech_rate: int = DEFAULTS.speech_rate,
                       max_audio_seconds: Optional[float] = MAX_AUDIO_SECONDS) -> PreparedSpeech:
        """The speech of a call, decoded (or spoken by espeak-ng) once, with its feature table at
        this pipeline's model frame rate: pass it as ``audio`` to any number of calls (the
        features are computed once, on demand). Arguments as in :meth:`__call__`."""
        check_speech_source(audio, text)
        if text is not None:
            wav = synthesize_speech(text, voice=voice, rate=speech_rate, max_seconds=max_audio_seconds)
        else:
            wav = load_audio(audio, sample_rate=SAMPLE_RATE, input_sample_rate=sample_rate,
                             max_seconds=max_audio_seconds)
        return PreparedSpeech(wav, FeatureTable(wav, SAMPLE_RATE, self.moda.config.fps, kind=self.moda.config.features,
                                                encoder=self.audio_encoder))     # rows on demand

    def prepare(self, image, audio=None, text=None, *, sample_rate: Optional[int] = None, voice: str = DEFAULTS.voice,
                speech_rate: int = DEFAULTS.speech_rate, generator: Optional[torch.Generator] = None,
                temperature: float = DEFAULTS.temperature, mouth_scale: float = DEFAULTS.mouth_scale,
                head_motion_scale: float = DEFAULTS.head_motion_scale, blink_rate: float = DEFAULTS.blink_rate,
                still: bool = DEFAULTS.still, fps: int = DEFAULTS.fps, face_index: Optional[int] = DEFAULTS.face_index,
                expression_scale: float = DEFAULTS.expression_scale,
                max_audio_seconds: Optional[float] = MAX_AUDIO_SECONDS,
                callback: Optional[Callable[[str, float], None]] = None) -> _Session:
        """Steps 1-3: the speech, the portrait, the features and the latent. See :meth:`__call__`.

        ``image`` may be a prepared :class:`~moda_hub.face.subject.Subject` (from
        :func:`~moda_hub.face.subject.prepare_subject`; ``face_index`` is then ignored) and
        ``audio`` a :class:`~moda_hub.speech.features.PreparedSpeech` (from :meth:`prepare_speech`):
        calls that share them detect the face and compute the speech features once."""
        report = callback or (lambda stage, fraction: None)
        generator = _one_generator(generator)
        # 1. the speech: decode or synthesise, 16 kHz mono (first: too long fails before any work)
        report("audio", 0.0)
        speech = audio if isinstance(audio, PreparedSpeech) else self.prepare_speech(
            audio, text, sample_rate=sample_rate, voice=voice, speech_rate=speech_rate,
            max_audio_seconds=max_audio_seconds)
        model_fps = self.moda.config.fps
        if (speech.features.kind, speech.features.fps) != (self.moda.config.features, model_fps):
            raise InvalidParameterError(f"the prepared speech has {speech.features.kind!r} features at "
                                        f"{speech.features.fps} fps, this pipeline hears {self.moda.config.features!r} "
                                        f"at {model_fps} — prepare it with this pipeline's prepare_speech()")
        wav = speech.wav
        if float(np.max(np.abs(wav))) < SILENCE_PEAK:
            mouth_scale = 0.0                                  # silence: the lips stay as in the portrait
        # 2. the portrait: decode, find the face, its pose and canonical mesh
        report("face", 0.1)
        subject = image if isinstance(image, Subject) else prepare_subject(image, face_index=face_index)
        if expression_scale != 1.0:            # the portrait's own mouth and brows, relaxed (or stronger)
            subject = dataclasses.replace(subject, canonical=relax_expression(subject.canonical, expression_scale))
        # 3. features at the model's frame rate (on demand), and the ProbAttn latent for the whole clip
        report("features", 0.15)
        feats = speech.features
        latent = self.moda.sample_latent(len(feats), 1, generator, temperature)
        closure = sample_blink_closure(len(feats), model_fps, blink_rate, generator,
                                       speech_pauses(wav, SAMPLE_RATE))
        return _Session(subject=subject, wav=wav, features=feats,
                        cond=torch.from_numpy(subject.canonical.reshape(-1)),
                        extra=torch.tensor([blink_condition(blink_rate)]), latent=latent,
                        num_frames=max(1, int(round(len(wav) / SAMPLE_RATE * fps))), fps=fps,
                        controls=dict(mouth_scale=mouth_scale, head_motion_scale=head_motion_scale, still=still,
                                      lip_amplitude=float(self.moda.config.lip_amplitude),
                                      lip_closure=lip_closure(subject.canonical)),
                        blink_closure=closure, closed_eye=closed_eye_offsets(subject.canonical))

    @torch.no_grad()
    def motion_chunk(self, session: _Session, start: int, stop: int):
        """Steps 4-5 for output frames [start, stop): stage 1 (only the windows these frames
        need, so a chunk equals the same frames of a whole-clip call), controls, frame rate,
        stage 2 and head pose. Returns (landmarks (t, 478, 3) image px, torso (t, 2) px, motion)."""
        model_fps = self.moda.config.fps
        s0, s1 = source_range(start, stop, model_fps, session.fps, len(session.features))
        # 4. stage 1: motion from audio and subject (windowed; the latent is shared)
        # windows touching [s0, s1) end before s1 + window: only their features are needed yet
        feats = session.features.upto(s1 + self.moda.config.window)
        motion = self.moda.generate(feats, session.cond, session.extra, latent=session.latent,
                                    frame_range=(s0, s1), cache=session.windows)
        motion = {k: v.float().cpu().numpy() for k, v in motion.items()}
        motion["eye"] = apply_blinks(motion["eye"], session.blink_closure[s0:s1], session.closed_eye)
        # 5. output frame rate, user controls, stage 2 + head pose -> landmarks in image pixels
        motion = apply_controls(resample_motion(motion, model_fps, session.fps, stop - start,
                                                dst_start=start, src_start=s0), **session.controls)
        landmarks = self.compose_landmarks(session.subject, motion)
        return landmarks, torso_to_px(motion["torso"], session.subject.pose), motion

    @torch.no_grad()
    def compose_landmarks(self, subject: Subject, motion: Dict[str, np.ndarray]) -> np.ndarray:
        """Stage 2 + pose: motion (T frames) -> landmarks (T, 478, 3) float32 in image pixels."""
        weight = next(self.composer.parameters())   # (ModelMixin.device/.dtype walk every submodule: ~1 ms each)
        cond = torch.from_numpy(subject.canonical.reshape(-1)).to(weight.device, weight.dtype)
        poses = apply_head_offset(subject.pose, motion["head"])                       # (T, 7)
        dense = self.composer.dense_offsets(motion["lip"], motion["eye"], cond)       # (T, 478, 3), any chunking
        mesh = keep_lips_apart(subject.canonical[None] + dense)                       # lips meet, never cross
        return from_canonical(mesh, poses).astype(np.float32)

    def stream(self, image, audio=None, text: Optional[str] = None, *, chunk_frames: int = 30,
               output_size: Optional[int] = None, output_path: Optional[str] = None, overwrite: bool = False,
               render: bool = True, **kwargs) -> Iterator[ModaStreamChunk]:
        r"""Yield the video chunk by chunk as soon as each is ready; memory stays flat.

        Takes the arguments of :meth:`__call__` (``output_type`` aside). ``chunk_frames``: frames
        per chunk, at most (big full-image frames come in smaller chunks: see :data:`CHUNK_BYTES`).
        ``output_path``: also write the MP4 progressively (finalised after the last
        chunk; deleted if the stream fails or is abandoned). ``render=False`` yields landmarks
        and motion only (``frames`` is an empty array).

        The frames equal those of ``__call__`` with the same arguments and generator.

        Example:
            >>> for chunk in pipe.stream(image="face.jpg", audio="speech.wav", output_path="live.mp4"):
            ...     show(chunk.frames)
        """
        if not _is_whole(chunk_frames) or chunk_frames < 1:
            raise InvalidParameterError(f"chunk_frames={chunk_frames!r} — use a positive whole number of frames")
        self._check_call(image, audio, text, "mp4", output_size, kwargs)
        if output_path is not None:                          # before any work
            output_path = check_output_file(output_path, VIDEO, inputs=(image, audio), overwrite=overwrite)
        session = self.prepare(image, audio, text, **kwargs)
        yield from self._render_session(session, chunk_frames, output_size, output_path, render,
                                        kwargs.get("callback"))

    def _render_session(self, session: _Session, chunk_frames: int, output_size: Optional[int],
                        output_path: Optional[str], render: bool, callback,
                        internal: bool = False, frames_needed: bool = True) -> Iterator[ModaStreamChunk]:
        """Steps 4-7 chunk by chunk: motion, landmarks, frames and (optionally) the MP4.
        ``internal``: the chunks' frames stay inside the pipeline (``__call__``), not the user's.
        ``frames_needed=False`` (only the MP4 is wanted): full-image frames go to the writer as
        their paste region only, and the chunks' ``frames`` are empty."""
        report = callback or (lambda stage, fraction: None)
        if output_size is None:                     # full image for photos up to 1 MP, else the renderer's crop
            output_size = default_output_size(session.subject.image.shape[:2])
        prepared = self.renderer.prepare(session.subject.image, session.subject.landmarks_px,
                                         output_size=output_size) if render else None
        writer = Mp4Writer(output_path, fps=session.fps, audio=session.wav, sample_rate=SAMPLE_RATE) \
            if output_path else None
        n = session.num_frames
        # full-image output only into the MP4: the writer builds each frame from the photo and the
        # region around the face, so no photo-sized frame is rendered or held (same video)
        # (the WarpRenderer's portraits only: a NeuralRenderer renders whole frames)
        region = prepared.paste_region if isinstance(prepared, PreparedPortrait) and writer is not None \
            and not frames_needed else None
        chunk_frames = frames_per_chunk(prepared, chunk_frames, region)   # full-size frames of a big photo: fewer
        try:
            for start in range(0, n, chunk_frames):
                stop = min(n, start + chunk_frames)
                landmarks, torso_px, motion = self.motion_chunk(session, start, stop)
                if region is not None:
                    writer.write_region(self.renderer.render(prepared, landmarks, torso_px, region_only=True),
                                        prepared.full_image, region[:2], copy=False)
                frames = self.renderer.render(prepared, landmarks, torso_px) if render and region is None \
                    else np.zeros((0, 0, 0, 3), np.uint8)
                if writer is not None and region is None:    # __call__ never hands these frames out: no copy
                    writer.write(frames, copy=not internal)
                report("render", 0.2 + 0.8 * stop / n)
                yield ModaStreamChunk(start, frames, landmarks, motion, float(session.fps), prepared)
            if writer is not None:
                writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, image, audio=None, text: Optional[str] = None, *, sample_rate: Optional[int] = None,
                 voice: str = DEFAULTS.voice, speech_rate: int = DEFAULTS.speech_rate,
                 generator: Optional[torch.Generator] = None, temperature: float = DEFAULTS.temperature,
                 mouth_scale: float = DEFAULTS.mouth_scale, head_motion_scale: float = DEFAULTS.head_motion_scale,
                 blink_rate: float = DEFAULTS.blink_rate, still: bool = DEFAULTS.still, fps: int = DEFAULTS.fps,
                 face_index: Optional[int] = DEFAULTS.face_index, expression_scale: float = DEFAULTS.expression_scale,
                 output_size: Optional[int] = DEFAULTS.output_size, output_type: str = "mp4",
                 output_path: Optional[str] = None, overwrite: bool = False,
                 max_audio_seconds: Optional[float] = MAX_AUDIO_SECONDS,
                 callback: Optional[Callable[[str, float], None]] = None) -> ModaPipelineOutput:
        r"""Animate ``image`` with ``audio`` (or ``text`` spoken by espeak-ng).

        Every option's default and range: :mod:`moda_hub.options`.

        Args:
            image (str, PIL.Image.Image, np.ndarray or Subject): the portrait; RGB, RGBA or grayscale;
                EXIF orientation is applied; or a prepared subject (see :meth:`prepare`).
            audio (str, np.ndarray, (sample_rate, np.ndarray) or PreparedSpeech, optional): speech — any
                file ffmpeg decodes (wav, mp3, m4a, flac, ogg, webm, a video's audio track), samples,
                or speech from :meth:`prepare_speech`.
            text (str, optional): text spoken by espeak-ng instead of ``audio``.
            sample_rate (int, optional): sample rate of an ``audio`` array (default 16000).
            voice (str, default "en-us"), speech_rate (int, default 165 words/min): for ``text``.
            generator (torch.Generator or a list of one, optional): the only source of randomness (blinks,
                head motion); anything else (an int, a numpy Generator) is refused by name.
            temperature (float, default 1.0): scale of the sampled latent; 0 gives the mean motion.
            mouth_scale (float, default 1.0): lip motion amplitude.
            head_motion_scale (float, default 1.0): head-pose and torso motion amplitude.
            blink_rate (float, default 17.0): blinks per minute the model aims for.
            still (bool, default False): keep the head and torso still; blinks and lips kept.
            fps (int, default 30): output frame rate (25 or 30).
            face_index (int, optional): which face, left to right, in a group photo; None = the largest.
            expression_scale (float, default 1.0, 0 to 1.5): how much of the portrait's own mouth and
                brow expression the speaking face keeps: 1 as photographed, 0 relaxed towards a neutral
                mouth and brows around which the speech moves (a broad smile or pout fades), 1.5 stronger
                (see :mod:`moda_hub.face.expression`).
            output_size (int, optional): 256 or 512 for a square face crop, 0 for the full image
                pasted back; None: the full image for photos up to 1 megapixel
                (``moda_hub.render.crop.FULL_IMAGE_MAX_PIXELS``), else the renderer's default crop (512).
            output_type (str, default "mp4"): "mp4" | "np" | "pil" | "landmarks" (no rendering).
            output_path (str, optional): where the MP4 goes (default "outputs/moda.mp4"); must end in
                .mp4 or .m4v; never an input of the call, a device, FIFO or a link into another folder
                (rules in :mod:`moda_hub.output_paths`). An existing MP4 there is replaced.
            overwrite (bool, default False): also replace an existing file that is not an MP4.
            max_audio_seconds (float or None, default 600): refuse longer speech with
                ``InputTooLongError`` before any work; None = no limit.
            callback (callable, optional): ``callback(stage: str, fraction: float)`` for progress.

        Returns:
            [`ModaPipelineOutput`]: video_path (normalised absolute path), frames, landmarks (T, 478, 3)
            image pixels, motion, fps.
        """
        # 0. inputs and the output path, before any work
        kwargs = dict(sample_rate=sample_rate, voice=voice, speech_rate=speech_rate, generator=generator,
                      temperature=temperature, mouth_scale=mouth_scale, head_motion_scale=head_motion_scale,
                      blink_rate=blink_rate, still=still, fps=fps, face_index=face_index,
                      expression_scale=expression_scale, max_audio_seconds=max_audio_seconds, callback=callback)
        self._check_call(image, audio, text, output_type, output_size, kwargs)
        report = callback or (lambda stage, fraction: None)
        video_path = None
        if output_type == "mp4":
            video_path = check_output_file(output_path or os.path.join("outputs", "moda.mp4"), VIDEO,
                                           inputs=(image, audio), overwrite=overwrite)
        # 1-7. portrait, speech, stage 1, stage 2, render, encode: chunk by chunk, into arrays
        # allocated once (a list of chunks + concatenate would hold everything twice at the end)
        session = self.prepare(image, audio, text, **kwargs)
        n = session.num_frames
        landmarks, motion, out_frames = np.empty((n, 478, 3), np.float32), {}, None
        chunks = self._render_session(session, 32, output_size, video_path, output_type != "landmarks", callback,
                                      internal=True, frames_needed=output_type in ("np", "pil"))
        with self.progress_bar(total=n) as bar:
            for chunk in chunks:
                a, b = chunk.start, chunk.start + len(chunk.landmarks)
                landmarks[a:b] = chunk.landmarks
                for k, v in chunk.motion.items():
                    motion.setdefault(k, np.empty((n,) + v.shape[1:], v.dtype))[a:b] = v
                if output_type in ("np", "pil"):
                    if out_frames is None:
                        out_frames = np.empty((n,) + chunk.frames.shape[1:], np.uint8)
                    out_frames[a:b] = chunk.frames
                bar.update(b - a)
        if output_type == "pil":
            out_frames = [PIL.Image.fromarray(f) for f in out_frames]
        report("done", 1.0)
        return ModaPipelineOutput(video_path=video_path, frames=out_frames, landmarks=landmarks,
                                  motion=motion, fps=float(fps), audio=session.wav)


def frames_per_chunk(prepared, chunk_frames: int, region=None) -> int:
    """``chunk_frames``, lowered so that one chunk of output frames stays within :data:`CHUNK_BYTES`
    (at least 1 frame). ``prepared``: the renderer's prepared portrait (its ``output_hw`` gives the
    frame size; None or unknown keeps ``chunk_frames``); ``region`` (x0, y0, x1, y1): only that part
    of each frame is rendered. Chunking never changes the frames."""
    hw = (region[3] - region[1], region[2] - region[0]) if region else getattr(prepared, "output_hw", None)
    if not hw:
        return chunk_frames
    return max(1, min(int(chunk_frames), CHUNK_BYTES // (3 * int(hw[0]) * int(hw[1]))))


def _is_number(value) -> bool:
    """A real number: int, float or a numpy scalar of those (not bool, not str)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_whole(value) -> bool:
    """A whole number: int, numpy integer, or an integral float (not bool, not str)."""
    return _is_number(value) and np.isfinite(value) and float(value) == int(value)


def _type_hint(value, expected: str) -> str:
    """" (a str where <expected> is expected)" for a value of the wrong type, else ""."""
    return "" if _is_number(value) else f" ({type(value).__name__} given where {expected} is expected)"


def _one_generator(generator) -> Optional[torch.Generator]:
    """The call's torch.Generator: None, a torch.Generator, or a list holding exactly one (one
    video per call; pass one generator per variation, each in its own call)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1 and isinstance(generator[0], torch.Generator):
            return generator[0]
        raise InvalidParameterError(f"generator is a {type(generator).__name__} of {len(generator)} — this "
                                    "pipeline makes one video per call: pass one torch.Generator (call once per "
                                    "variation, each with its own generator)")
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = (f"torch.Generator().manual_seed({int(generator)})" if _is_whole(generator)
                else "torch.Generator().manual_seed(0)")
        raise InvalidParameterError(f"generator={generator!r} is a {type(generator).__name__} — pass a "
                                    f"torch.Generator, e.g. {hint}")
    return generator


def _drop_local_paths(folder: str) -> None:
    """Remove ``_name_or_path`` from model_index.json and the component configs in ``folder`` where
    it is a local absolute path (where diffusers loaded it from on the saving machine): a folder
    meant for sharing should not carry it."""
    paths = [os.path.join(folder, "model_index.json")] + [os.path.join(folder, name, "config.json")
                                                         for name in sorted(os.listdir(folder))]
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        if os.path.isabs(str(config.get("_name_or_path", ""))):
            del config["_name_or_path"]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")
