"""ModaPipeline: one portrait + speech -> a talking-portrait video.

A thin orchestrator in the diffusers style: every step below calls a component or a
front-end; the maths lives there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from .audio import load_audio, synthesize_speech
from .features import speech_features
from .errors import InvalidParameterError
from .face.pose import apply_head_offset, from_canonical
from .face.subject import Subject, prepare_subject
from .models.composer import FacialComposer
from .models.moda import ModaModel
from .motion import apply_controls, resample_motion
from .video import Mp4Writer

SAMPLE_RATE = 16000
OUTPUT_TYPES = ("mp4", "np", "pil", "landmarks")


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
class _Plan:
    """Everything computed before rendering: the subject, speech, landmarks and motion."""
    subject: Subject
    wav: np.ndarray
    landmarks_px: np.ndarray          # (T, 478, 3) image pixels
    torso_px: np.ndarray              # (T, 2) image pixels
    motion: Dict[str, np.ndarray]
    fps: int


class ModaPipeline(DiffusionPipeline):
    r"""Audio-driven portrait animation (MODA, ICCV 2023) with a swappable renderer.

    Components:
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

    model_cpu_offload_seq = "moda->composer"

    def __init__(self, moda: ModaModel, composer: FacialComposer, renderer):
        super().__init__()
        self.register_modules(moda=moda, composer=composer, renderer=renderer)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def check_inputs(audio, text, fps, output_type, temperature, mouth_scale, head_motion_scale,
                     blink_rate, output_size):
        if (audio is None) == (text is None):
            raise InvalidParameterError("give exactly one of `audio` (a file or an array) or `text` to speak")
        if fps not in (24, 25, 30, 50, 60):
            raise InvalidParameterError(f"fps={fps!r} is not supported — use 25 or 30 (24, 50 and 60 also work)")
        if output_type not in OUTPUT_TYPES:
            raise InvalidParameterError(f"output_type={output_type!r} — use one of {', '.join(OUTPUT_TYPES)}")
        for name, value, hi in (("temperature", temperature, 3.0), ("mouth_scale", mouth_scale, 3.0),
                                ("head_motion_scale", head_motion_scale, 5.0), ("blink_rate", blink_rate, 60.0)):
            if not isinstance(value, (int, float)) or not np.isfinite(value) or not 0 <= value <= hi:
                raise InvalidParameterError(f"{name}={value!r} is out of range — use a number from 0 to {hi}")
        if output_size is not None and output_size not in (0, 256, 512):
            raise InvalidParameterError(f"output_size={output_size!r} — use 256 or 512 (a face crop) or 0 (the full image)")

    # ------------------------------------------------------------------ steps
    def plan(self, image, audio=None, text=None, *, sample_rate: Optional[int] = None, voice: str = "en-us",
             speech_rate: int = 165, generator: Optional[torch.Generator] = None, temperature: float = 1.0,
             mouth_scale: float = 1.0, head_motion_scale: float = 1.0, blink_rate: float = 17.0,
             still: bool = False, fps: int = 30, face_index: Optional[int] = None,
             max_audio_seconds: Optional[float] = None, callback: Optional[Callable[[str, float], None]] = None
             ) -> _Plan:
        """Steps 1-5: everything up to per-frame landmarks. See :meth:`__call__` for arguments."""
        report = callback or (lambda stage, fraction: None)
        # 1. the portrait: decode, find the face, its pose and canonical mesh
        report("face", 0.0)
        subject = prepare_subject(image, face_index=face_index)
        # 2. the speech: decode or synthesise, 16 kHz mono
        report("audio", 0.1)
        if text is not None:
            wav = synthesize_speech(text, voice=voice, rate=speech_rate, max_seconds=max_audio_seconds)
        else:
            wav = load_audio(audio, sample_rate=SAMPLE_RATE, input_sample_rate=sample_rate,
                             max_seconds=max_audio_seconds)
        duration = len(wav) / SAMPLE_RATE
        # 3. audio features at the model's frame rate
        model_fps = self.moda.config.fps
        feats = torch.from_numpy(speech_features(wav, SAMPLE_RATE, model_fps, kind=self.moda.config.features))
        # 4. stage 1: motion, one forward pass (windowed for long clips)
        report("motion", 0.2)
        cond = torch.from_numpy(subject.canonical.reshape(-1))
        extra = torch.tensor([blink_rate / 20.0])
        motion = self.moda.generate(feats, cond, extra, generator=generator, temperature=temperature)
        motion = {k: v.float().cpu().numpy() for k, v in motion.items()}
        # 5. controls, output frame rate, stage 2 and head pose -> landmarks in image pixels
        num_frames = max(1, int(round(duration * fps)))
        motion = apply_controls(resample_motion(motion, model_fps, fps, num_frames),
                                mouth_scale=mouth_scale, head_motion_scale=head_motion_scale, still=still)
        report("composer", 0.3)
        landmarks = self.compose_landmarks(subject, motion)
        torso_px = motion["torso"] * subject.pose[6]
        return _Plan(subject, wav, landmarks, torso_px.astype(np.float32), motion, fps)

    @torch.no_grad()
    def compose_landmarks(self, subject: Subject, motion: Dict[str, np.ndarray], chunk: int = 2048) -> np.ndarray:
        """Stage 2 + pose: motion (T frames) -> landmarks (T, 478, 3) float32 in image pixels."""
        cond = torch.from_numpy(subject.canonical.reshape(-1)).to(self.composer.device, self.composer.dtype)
        poses = apply_head_offset(subject.pose, motion["head"])                       # (T, 7)
        out = np.empty((len(poses), subject.canonical.shape[0], 3), np.float32)
        for s in range(0, len(poses), chunk):
            lip = torch.from_numpy(motion["lip"][s:s + chunk]).to(cond)
            eye = torch.from_numpy(motion["eye"][s:s + chunk]).to(cond)
            dense = self.composer(lip, eye, cond).float().cpu().numpy()             # (t, 478, 3)
            out[s:s + chunk] = from_canonical(subject.canonical[None] + dense, poses[s:s + chunk])
        return out

    def render_chunks(self, plan: _Plan, output_size: Optional[int] = None, chunk: int = 32
                      ) -> Iterator[np.ndarray]:
        """Step 6: frames (t, H, W, 3) uint8, ``chunk`` at a time, never all in memory."""
        prepared = self.renderer.prepare(plan.subject.image, plan.subject.landmarks_px, output_size=output_size)
        for s in range(0, len(plan.landmarks_px), chunk):
            yield self.renderer.render(prepared, plan.landmarks_px[s:s + chunk], plan.torso_px[s:s + chunk])

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, image, audio=None, text: Optional[str] = None, *, sample_rate: Optional[int] = None,
                 voice: str = "en-us", speech_rate: int = 165, generator: Optional[torch.Generator] = None,
                 temperature: float = 1.0, mouth_scale: float = 1.0, head_motion_scale: float = 1.0,
                 blink_rate: float = 17.0, still: bool = False, fps: int = 30, face_index: Optional[int] = None,
                 output_size: Optional[int] = None, output_type: str = "mp4", output_path: Optional[str] = None,
                 max_audio_seconds: Optional[float] = None,
                 callback: Optional[Callable[[str, float], None]] = None) -> ModaPipelineOutput:
        r"""Animate ``image`` with ``audio`` (or ``text`` spoken by espeak-ng).

        Args:
            image (str, PIL.Image.Image or np.ndarray): the portrait; RGB, RGBA or grayscale; EXIF
                orientation is applied.
            audio (str, np.ndarray or (sample_rate, np.ndarray), optional): speech — any file ffmpeg
                decodes (wav, mp3, m4a, flac, ogg, webm, a video's audio track) or samples.
            text (str, optional): text spoken by espeak-ng instead of ``audio``.
            sample_rate (int, optional): sample rate of an ``audio`` array (default 16000).
            voice (str, default "en-us"), speech_rate (int, default 165 words/min): for ``text``.
            generator (torch.Generator, optional): the only source of randomness (blinks, head motion).
            temperature (float, default 1.0): scale of the sampled latent; 0 gives the mean motion.
            mouth_scale (float, default 1.0): lip motion amplitude.
            head_motion_scale (float, default 1.0): head-pose and torso motion amplitude.
            blink_rate (float, default 17.0): blinks per minute the model aims for.
            still (bool, default False): keep the head and torso still; blinks and lips kept.
            fps (int, default 30): output frame rate (25 or 30).
            face_index (int, optional): which face, left to right, in a group photo; None = the largest.
            output_size (int, optional): 256 or 512 for a square face crop, 0 for the full image
                pasted back; None uses the renderer's default.
            output_type (str, default "mp4"): "mp4" | "np" | "pil" | "landmarks" (no rendering).
            output_path (str, optional): where the MP4 goes (default "outputs/moda.mp4").
            max_audio_seconds (float, optional): refuse longer speech with ``InputTooLongError``.
            callback (callable, optional): ``callback(stage: str, fraction: float)`` for progress.

        Returns:
            [`ModaPipelineOutput`]: video_path, frames, landmarks (T, 478, 3) image pixels, motion, fps.
        """
        # 0. inputs
        self.check_inputs(audio, text, fps, output_type, temperature, mouth_scale, head_motion_scale,
                          blink_rate, output_size)
        report = callback or (lambda stage, fraction: None)
        # 1-5. portrait, speech, features, stage 1, stage 2 -> landmarks
        plan = self.plan(image, audio, text, sample_rate=sample_rate, voice=voice, speech_rate=speech_rate,
                         generator=generator, temperature=temperature, mouth_scale=mouth_scale,
                         head_motion_scale=head_motion_scale, blink_rate=blink_rate, still=still, fps=fps,
                         face_index=face_index, max_audio_seconds=max_audio_seconds, callback=callback)
        video_path, frames = None, None
        n = len(plan.landmarks_px)
        # 6. render (and 7. encode) chunk by chunk
        if output_type == "mp4":
            video_path = output_path or os.path.join("outputs", "moda.mp4")
            with Mp4Writer(video_path, fps=fps, audio=plan.wav, sample_rate=SAMPLE_RATE) as writer, \
                    self.progress_bar(total=n) as bar:
                for done, chunk in self._chunks_with_progress(plan, output_size, report):
                    writer.write(chunk)
                    bar.update(len(chunk))
        elif output_type in ("np", "pil"):
            parts = []
            with self.progress_bar(total=n) as bar:
                for done, chunk in self._chunks_with_progress(plan, output_size, report):
                    parts.append(chunk)
                    bar.update(len(chunk))
            frames = np.concatenate(parts)
            if output_type == "pil":
                frames = [PIL.Image.fromarray(f) for f in frames]
        report("done", 1.0)
        return ModaPipelineOutput(video_path=video_path, frames=frames, landmarks=plan.landmarks_px,
                                  motion=plan.motion, fps=float(fps), audio=plan.wav)

    def _chunks_with_progress(self, plan, output_size, report):
        n = len(plan.landmarks_px)
        done = 0
        for chunk in self.render_chunks(plan, output_size):
            done += len(chunk)
            report("render", 0.35 + 0.65 * done / n)
            yield done, chunk
