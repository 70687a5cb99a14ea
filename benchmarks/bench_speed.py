"""Speed and memory of ModaPipeline on the CPU: per-stage times, real-time factor, the encode-only
floor, peak RSS, cold start and first-chunk latency. Not a test: a measurement with the machine
written next to every number.

    .venv/bin/python benchmarks/bench_speed.py              # full: 1, 10, 60, 600 s (about 40 min on 2 cores)
    .venv/bin/python benchmarks/bench_speed.py --quick      # 1 and 10 s, one run each (about 2 min)
    .venv/bin/python benchmarks/bench_speed.py --cases 10s_crop512 --repeats 5
    .venv/bin/python benchmarks/bench_speed.py --profile 10s_crop512     # cProfile of one run

Inputs (made once, cached in ``outputs/bench/inputs``): the speech is ``BENCH_TEXT`` spoken by
espeak-ng (en-us, 165 words/min, about 100 s), tiled with 0.3 s pauses to 600 s; the 1, 10 and
60 s clips are the first seconds of that, the 600 s clip all of it. WAV files (16 kHz PCM), so
the timed run decodes audio like a user's call does. Portraits: ``examples/portrait.png``
(512x512) rendered as a 512x512 face crop (``output_size=512``), and the same portrait upscaled
to 1024x1024 (Lanczos) rendered full size with paste-back (``output_size=0``).

Every run is a fresh subprocess: load the pipeline, one 1 s warm-up call (MediaPipe, pocketsphinx
and ffmpeg start lazily; reported as ``first_call_s``), reset the peak-RSS counter
(``/proc/self/clear_refs``), then the timed ``pipe(image=..., audio=wav_path, output_type="mp4")``
with a timer around each stage:

- ``face``      image decode + MediaPipe + pose (``prepare_subject``)
- ``decode``    audio decode (``load_audio``, ffmpeg)
- ``logmel``    log-mel features; ``phones``: pocketsphinx phone recognition + phone stream
- ``audio_encoder`` the ``audio_encoder`` component (Whisper log-mel of the clip + its encoder
  windows, ``moda_hub.speech.speech_states``) for pipelines whose stage 1 hears ``"whisper-tiny"``
- ``stage1``    MODA (``moda.sample_latent`` + ``moda.generate``); ``stage2``: composer + head pose
  (``compose_landmarks``)
- ``render``    ``renderer.render`` (+ ``render_prepare``)
- ``encode``    time the Python side spends in ``Mp4Writer.write``/``close`` (blocked on the pipe to
  ffmpeg, then the flush and the AAC mux); x264 itself runs in a separate ffmpeg process, in
  parallel with rendering, so its CPU time is reported apart (``ffmpeg_cpu_s``)
- ``other``     the rest (resampling, controls, chunk bookkeeping)

RTF = wall-clock of the call / audio duration. The encode floor is measured in the same process
right after: the same number of frames (the run's own first frames, cycled) through ``Mp4Writer``
with the same settings and the same audio. "Render free" (a bound, for the calls up to 60 s): the same call
once more with ``renderer.render`` replaced by copying the run's own frames -- what the call costs
beyond the floor when rendering costs nothing. First-chunk latency: ``pipe.stream(...)`` to its first
chunk (32 frames) in that warm process. Cold start: ``import moda_hub`` + ``from_pretrained`` in a
fresh interpreter. Torch runs with one thread (``--threads``), as the project's scripts do.
Medians over the repeats are quoted.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # legacy_writer

RESULTS = os.path.join(ROOT, "benchmarks", "results")
INPUTS = os.path.join(ROOT, "outputs", "bench", "inputs")
DEFAULT_MODEL = os.path.join(ROOT, "pretrained", "moda-base")
SAMPLE_RATE = 16000
FPS = 30
STAGES = ("face", "decode", "logmel", "phones", "audio_encoder", "stage1", "stage2", "render_prepare", "render",
          "encode")

BENCH_TEXT = (
    "Good morning, and thank you for coming. Today I want to talk about the small harbour town where "
    "I grew up, and about the people who still live there. Every morning the fishing boats leave before "
    "the sun is up, and by noon the market is full of voices, baskets and bright umbrellas. My "
    "grandmother sold bread at the corner of the square for forty years. She knew every family by name, "
    "and she always remembered who liked their loaf dark and who wanted it pale. When the winter storms "
    "came, the whole street would gather in her kitchen to wait for the wind to calm down. We played "
    "cards, we told stories, and sometimes we simply watched the waves climb over the old stone wall. "
    "Years later I moved to the city to study engineering. The city was fast and loud, and at first I "
    "missed the quiet evenings by the sea. But I learned to love the trains, the libraries and the long "
    "conversations with friends from every corner of the world. Now, when I go back home, I notice how "
    "much has changed. There is a new bridge, a museum about the sailors, and a school with a computer "
    "room. Yet the bakery is still there, and the smell of warm bread still fills the square at dawn. "
    "What does this teach us? Perhaps that places keep their heart even when their faces change. "
    "Perhaps that the people we meet shape us more than the buildings we live in. Thank you for listening, "
    "and please ask me anything you like about boats, bread or bridges.")

# (name, seconds of speech, image kind, output_size, api)
DURATIONS = (1, 10, 60, 600)
LAYOUTS = {"crop512": ("portrait_512.png", 512), "full1024": ("portrait_1024.png", 0),
           "full12mp": ("photo_4000x3000.png", 0)}      # a 12-megapixel phone photo at full size: 10 s only


# ------------------------------------------------------------------------------------- helpers
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_times():
    """CPU seconds so far: (this process, its finished children = ffmpeg, the phone worker)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime, _phone_worker_cpu()


def _phone_worker_cpu() -> float:
    """CPU seconds of the phone-recognition helper process (alive, so not in RUSAGE_CHILDREN)."""
    import psutil
    from moda_hub.speech.phone_worker import shared_worker
    worker = shared_worker()
    if worker is None:
        return 0.0
    try:
        t = psutil.Process(worker._proc.pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


class RssSampler(threading.Thread):
    """Samples RSS (MB) every ``period`` seconds: this process (``samples`` = [(t, mb)]) and its child
    processes (ffmpeg), whose peak is ``children_peak_mb`` and the peak of the sum ``total_peak_mb``.
    (getrusage's children ru_maxrss is no use here: a forked child inherits the parent's RSS
    high-water mark before it execs ffmpeg.)"""

    def __init__(self, period: float = 0.25):
        super().__init__(daemon=True)
        self.period, self.samples, self._stop_event = period, [], threading.Event()
        self.children_peak_mb = self.total_peak_mb = 0.0
        self._t0 = time.perf_counter()

    def _children_mb(self) -> float:
        import psutil
        total = 0
        try:
            for child in psutil.Process().children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total / 2 ** 20

    def _sample(self):
        me, kids = _rss_mb(), self._children_mb()
        self.samples.append((time.perf_counter() - self._t0, me))
        self.children_peak_mb = max(self.children_peak_mb, kids)
        self.total_peak_mb = max(self.total_peak_mb, me + kids)

    def run(self):
        while not self._stop_event.is_set():
            self._sample()
            self._stop_event.wait(self.period)

    def stop(self):
        self._stop_event.set()
        self.join()
        self._sample()

    def profile(self, points: int = 11) -> list:
        """RSS (MB) at 0, 10, ..., 100 % of the run (the max within each tenth)."""
        if not self.samples:
            return []
        end = self.samples[-1][0] or 1.0
        out = []
        for k in range(points):
            lo, hi = (k - 0.5) / (points - 1) * end, (k + 0.5) / (points - 1) * end
            vals = [mb for t, mb in self.samples if lo <= t <= hi] or [self.samples[-1][1]]
            out.append(round(max(vals), 1))
        return out


class StageClock:
    """Wraps functions and methods so that the time spent in them adds up per stage."""

    def __init__(self):
        self.seconds = {s: 0.0 for s in STAGES}
        self.calls = {s: 0 for s in STAGES}
        self._undo = []

    def wrap(self, owner, attr: str, stage: str):
        original = getattr(owner, attr)
        own = attr in vars(owner)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0
                self.calls[stage] += 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original if own else None))

    def restore(self):
        for owner, attr, original in reversed(self._undo):
            if original is None:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._undo.clear()


def instrument(pipe, writer_cls) -> StageClock:
    import moda_hub.speech.features
    import moda_hub.speech.phones
    import moda_hub.pipeline
    import moda_hub.video
    clock = StageClock()
    clock.wrap(moda_hub.pipeline, "prepare_subject", "face")
    clock.wrap(moda_hub.pipeline, "load_audio", "decode")
    clock.wrap(moda_hub.speech.features, "audio_features", "logmel")
    clock.wrap(moda_hub.speech.phones, "phone_stream", "phones")               # in this process
    clock.wrap(moda_hub.speech.features.FeatureTable, "_worker_rows", "phones")  # waiting for the phone worker
    if getattr(pipe, "audio_encoder", None) is not None:                 # Whisper log-mel + encoder windows
        import moda_hub.speech.speech_states
        clock.wrap(moda_hub.speech.speech_states.EncoderStates, "__init__", "audio_encoder")
        clock.wrap(moda_hub.speech.speech_states.EncoderStates, "_encode_next", "audio_encoder")
    clock.wrap(pipe.moda, "sample_latent", "stage1")
    clock.wrap(pipe.moda, "generate", "stage1")
    clock.wrap(pipe, "compose_landmarks", "stage2")
    clock.wrap(pipe.renderer, "prepare", "render_prepare")
    clock.wrap(pipe.renderer, "render", "render")
    clock.wrap(writer_cls, "write", "encode")
    clock.wrap(writer_cls, "close", "encode")
    return clock


# ------------------------------------------------------------------------------------- inputs
def make_inputs(durations) -> dict:
    """WAV clips and portraits in ``outputs/bench/inputs`` (made once). Returns paths."""
    import numpy as np
    import PIL.Image
    import soundfile as sf

    os.makedirs(INPUTS, exist_ok=True)
    paths = {"portrait_512.png": os.path.join(INPUTS, "portrait_512.png"),
             "portrait_1024.png": os.path.join(INPUTS, "portrait_1024.png")}
    src = PIL.Image.open(os.path.join(ROOT, "examples", "portrait.png")).convert("RGB")
    if not os.path.exists(paths["portrait_512.png"]):
        src.save(paths["portrait_512.png"])
    if not os.path.exists(paths["portrait_1024.png"]):
        src.resize((1024, 1024), PIL.Image.LANCZOS).save(paths["portrait_1024.png"])
    paths["photo_4000x3000.png"] = os.path.join(INPUTS, "photo_4000x3000.png")
    if not os.path.exists(paths["photo_4000x3000.png"]):      # the portrait x4 (face ~1000 px) on a 12 MP canvas
        photo = PIL.Image.new("RGB", (4000, 3000), (118, 112, 104))
        photo.paste(src.resize((2048, 2048), PIL.Image.LANCZOS), (976, 952))
        photo.save(paths["photo_4000x3000.png"])
    base = os.path.join(INPUTS, "speech_base.wav")
    if not os.path.exists(base):
        from moda_hub.speech.audio import synthesize_speech
        wav = synthesize_speech(BENCH_TEXT, voice="en-us", rate=165, sample_rate=SAMPLE_RATE)
        sf.write(base, wav, SAMPLE_RATE, subtype="PCM_16")
    speech, _ = sf.read(base, dtype="float32")
    pause = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    need = max(durations) * SAMPLE_RATE
    reps = int(np.ceil(need / (len(speech) + len(pause))))
    long = np.concatenate([np.concatenate([speech, pause]) for _ in range(reps)])
    for d in durations:
        p = os.path.join(INPUTS, f"speech_{d}s.wav")
        if not os.path.exists(p):
            sf.write(p, long[:d * SAMPLE_RATE], SAMPLE_RATE, subtype="PCM_16")
        paths[f"{d}s"] = p
    paths["base_seconds"] = round(len(speech) / SAMPLE_RATE, 2)
    return paths


def machine_info() -> dict:
    import torch
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = _meminfo_gb()
    try:
        import cv2
        cv = cv2.__version__
    except ImportError:  # pragma: no cover
        cv = None
    from moda_hub.render.warp import render_threads
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu, "ram_gb": mem,
            "torch": torch.__version__, "python": platform.python_version(), "opencv": cv,
            "ffmpeg": _ffmpeg_version(), "kernel": platform.release(), "render_threads": render_threads()}


def _meminfo_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    return 0.0


def _ffmpeg_version() -> str:
    """PyAV's version and its FFmpeg libraries; the legacy writer's ffmpeg binary."""
    import av
    libs = av.library_versions
    text = (f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, libs['libavcodec']))}); legacy writer: "
            f"ffmpeg ")
    try:
        from legacy_writer import ffmpeg_version
        return text + ffmpeg_version()
    except ImportError:
        return text + "not installed"


# The writers the benchmark can compare, by name (``--writers``): "pyav" is moda_hub's Mp4Writer;
# "ffmpeg-pipe" the writer it replaced (benchmarks/legacy_writer.py), for the A/B.
WRITERS = ("pyav", "ffmpeg-pipe")


def writer_class(name: str):
    if name == "pyav":
        from moda_hub.video import Mp4Writer
        return Mp4Writer
    from legacy_writer import FfmpegPipeMp4Writer
    return FfmpegPipeMp4Writer


# ------------------------------------------------------------------------------------- worker
def worker(spec: dict) -> dict:
    """One measured run in this (fresh) process; see the module docstring."""
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    import moda_hub.pipeline
    from moda_hub import ModaPipeline
    from moda_hub.video import iter_video_frames

    writers = {name: writer_class(name) for name in spec["floor_writers"]}
    Writer = writers[spec["writer"]]
    moda_hub.pipeline.Mp4Writer = Writer         # the pipeline writes its MP4 with this one

    t0 = time.perf_counter()
    pipe = ModaPipeline.from_pretrained(spec["model"])
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="moda-bench-")
    size = spec["output_size"]
    result = {"load_s": round(load_s, 3), "threads": torch.get_num_threads()}

    # warm-up: lazy initialisation of MediaPipe, pocketsphinx, ffmpeg
    t0 = time.perf_counter()
    pipe(image=spec["image"], audio=spec["warmup_audio"], generator=torch.Generator().manual_seed(1),
         output_size=size, output_type="mp4", output_path=os.path.join(tmp, "warmup.mp4"))
    result["first_call_s"] = round(time.perf_counter() - t0, 3)
    result["rss_before_mb"] = round(_rss_mb(), 1)

    # the timed run
    clock = instrument(pipe, Writer)
    out_path = os.path.join(tmp, "out.mp4")
    result["peak_reset"] = _reset_peak_rss()
    sampler = RssSampler()
    sampler.start()
    cpu0 = _cpu_times()
    profiler = cProfile.Profile() if spec.get("profile") else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    kw = dict(image=spec["image"], audio=spec["audio"], generator=torch.Generator().manual_seed(0),
              output_size=size)
    if spec["api"] == "call":
        out = pipe(output_type="mp4", output_path=out_path, **kw)
        n_frames, wav = len(out.landmarks), out.audio
        del out
    else:  # stream to an MP4, keeping nothing: what a long-audio server would do
        n_frames = 0
        for chunk in pipe.stream(output_path=out_path, chunk_frames=32, **kw):
            n_frames += len(chunk.landmarks)
        wav = None
    wall = time.perf_counter() - t0
    if profiler:
        profiler.disable()
    cpu1 = _cpu_times()
    sampler.stop()
    clock.restore()
    result.update(
        wall_s=round(wall, 3), frames=n_frames, audio_s=spec["seconds"], rtf=round(wall / spec["seconds"], 4),
        stages_s={k: round(v, 3) for k, v in clock.seconds.items()},
        other_s=round(wall - sum(clock.seconds.values()), 3),
        cpu_self_s=round(cpu1[0] - cpu0[0], 2), ffmpeg_cpu_s=round(cpu1[1] - cpu0[1], 2),
        phone_worker_cpu_s=round(cpu1[2] - cpu0[2], 2),
        peak_rss_mb=round(_status_kb("VmHWM") / 1024, 1),
        ffmpeg_peak_rss_mb=round(sampler.children_peak_mb, 1), total_peak_rss_mb=round(sampler.total_peak_mb, 1),
        rss_profile_mb=sampler.profile())
    result["cpu_utilisation"] = round((result["cpu_self_s"] + result["ffmpeg_cpu_s"]
                                       + result["phone_worker_cpu_s"]) / wall, 2)
    if profiler:
        s = io.StringIO()
        pstats.Stats(profiler, stream=s).sort_stats("tottime").print_stats(35)
        s2 = io.StringIO()
        pstats.Stats(profiler, stream=s2).sort_stats("cumulative").print_stats(35)
        result["profile_tottime"], result["profile_cumulative"] = s.getvalue(), s2.getvalue()

    # the encode-only floor: same frame count, encoder settings and audio, through Mp4Writer
    if wav is None:
        from moda_hub.speech.audio import load_audio
        wav = load_audio(spec["audio"])
    sample = np.stack(list(iter_video_frames(out_path, max_frames=64)))
    if len(sample) < 64:                              # ping-pong so the cycle has no cut
        sample = np.concatenate([sample, sample[::-1]])
    sample = np.ascontiguousarray(np.resize(sample, (64,) + sample.shape[1:]))
    os.remove(out_path)
    # Every writer compared is timed here, alternating (A B A B ...) in this one process, so the
    # old and new writer see the same machine load; the run's ratio uses its own writer's floor.
    floors = {name: [] for name in writers}
    floor_cpu = {name: [] for name in writers}
    for _ in range(spec["floor_repeats"]):
        for name, cls in writers.items():
            cpu0 = _cpu_times()
            t0 = time.perf_counter()
            with cls(os.path.join(tmp, "floor.mp4"), fps=FPS, audio=wav, sample_rate=SAMPLE_RATE) as w:
                left = n_frames
                while left > 0:
                    half = sample[:32] if (n_frames - left) % 64 == 0 else sample[32:]
                    w.write(half[:min(32, left)])
                    left -= min(32, left)
            floors[name].append(time.perf_counter() - t0)
            cpu1 = _cpu_times()
            floor_cpu[name].append(cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1])
    floor = statistics.median(floors[spec["writer"]])
    result.update(floor_s=round(floor, 3), ratio_to_floor=round(wall / floor, 2),
                  floors_s={k: [round(v, 3) for v in vals] for k, vals in floors.items()},
                  floor_cpu_s={k: round(statistics.median(v), 2) for k, v in floor_cpu.items()})

    # a bound, not a variant: the same call with rendering free (each chunk's frames copied from the
    # run's own first frames, as the floor writes them) -- what everything but the render costs
    if spec["api"] == "call" and spec["seconds"] <= 60:
        def copied_frames(prepared, landmarks, torso_offset_px=None):
            return sample[np.arange(len(landmarks)) % len(sample)]        # fancy indexing: a fresh copy
        pipe.renderer.render = copied_frames
        try:
            t0 = time.perf_counter()
            pipe(output_type="mp4", output_path=out_path, **{**kw, "generator": torch.Generator().manual_seed(0)})
            free = time.perf_counter() - t0
        finally:
            del pipe.renderer.render
        os.remove(out_path)
        result.update(render_free_s=round(free, 3), render_free_ratio_to_floor=round(free / floor, 2))

    # first streamed chunk, warm process
    del sample, wav
    t0 = time.perf_counter()
    chunks = pipe.stream(chunk_frames=32, **{**kw, "generator": torch.Generator().manual_seed(0)})
    next(chunks)
    result["first_chunk_s"] = round(time.perf_counter() - t0, 3)
    chunks.close()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def cold_start(model: str, threads: int) -> dict:
    """import + from_pretrained in a fresh interpreter (seconds), and spawn-to-done wall time."""
    code = ("import time, json; t0 = time.perf_counter()\n"
            "import torch; torch.set_num_threads(%d); ta = time.perf_counter()\n"
            "import torch._dynamo; td = time.perf_counter()\n"           # diffusers imports it at start-up
            "import importlib.util\n"
            "if importlib.util.find_spec('transformers'):\n"                # ... and transformers, when installed
            "    import transformers.utils.quantization_config\n"
            "tt = time.perf_counter()\n"
            "import diffusers.pipelines.pipeline_utils; tb = time.perf_counter()\n"
            "from moda_hub import ModaPipeline\n"
            "t1 = time.perf_counter(); pipe = ModaPipeline.from_pretrained(%r); t2 = time.perf_counter()\n"
            "print(json.dumps({'import_s': t1 - t0, 'import_torch_s': ta - t0, 'import_diffusers_s': tb - ta,\n"
            "                  'import_dynamo_s': td - ta, 'import_transformers_s': tt - td,\n"
            "                  'import_moda_hub_rest_s': t1 - tb, 'from_pretrained_s': t2 - t1, 'cold_start_s': t2 - t0}))\n"
            % (threads, model))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=_env())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out = {k: round(v, 3) for k, v in out.items()}
    out["process_wall_s"] = round(wall, 3)
    return out


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_case(spec: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        spec_path = f.name
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec_path],
                          capture_output=True, text=True, cwd=ROOT, env=_env())
    os.remove(spec_path)
    if proc.returncode != 0:
        raise RuntimeError(f"case {spec['case']} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["loadavg_before"] = round(load, 2)
    return out


# ------------------------------------------------------------------------------------- summary
def _median(runs, key):
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarise(runs: list) -> dict:
    med = {k: _median(runs, k) for k in ("wall_s", "rtf", "floor_s", "ratio_to_floor", "peak_rss_mb",
                                         "ffmpeg_peak_rss_mb", "total_peak_rss_mb", "first_chunk_s", "first_call_s", "cpu_self_s",
                                         "ffmpeg_cpu_s", "phone_worker_cpu_s", "cpu_utilisation", "other_s", "load_s",
                                         "render_free_s", "render_free_ratio_to_floor")}
    med["stages_s"] = {s: round(statistics.median(r["stages_s"][s] for r in runs), 3) for s in STAGES}
    med["frames"], med["audio_s"], med["repeats"] = runs[0]["frames"], runs[0]["audio_s"], len(runs)
    med["stage12_pct_of_audio"] = round(100 * (med["stages_s"]["stage1"] + med["stages_s"]["stage2"])
                                        / med["audio_s"], 3)
    med["encoder_stage12_pct_of_audio"] = round(100 * (med["stages_s"]["audio_encoder"] + med["stages_s"]["stage1"]
                                                       + med["stages_s"]["stage2"]) / med["audio_s"], 3)
    med["render_ms_per_frame"] = round(1000 * med["stages_s"]["render"] / med["frames"], 2)
    # CPU work is less sensitive than wall time to other users of a shared machine: the RTF two
    # fully used cores would give for it (Python process and ffmpeg together / 2)
    med["rtf_idle_2core_bound"] = round((med["cpu_self_s"] + med["ffmpeg_cpu_s"] + med["phone_worker_cpu_s"])
                                        / 2 / med["audio_s"], 3)
    med["loadavg_before"] = _median(runs, "loadavg_before")
    med["floor_ms_per_frame"] = round(1000 * med["floor_s"] / med["frames"], 2)
    # the in-process A/B of the encode floor: every writer's floors of every run of this case
    names = runs[0].get("floors_s", {})
    med["floor_ab_s"] = {k: round(statistics.median(v for r in runs for v in r["floors_s"][k]), 3) for k in names}
    med["floor_ab_cpu_s"] = {k: round(statistics.median(r["floor_cpu_s"][k] for r in runs), 2) for k in names}
    return med


def check_targets(results: dict) -> list:
    cases = {c["case"]: c["median"] for c in results["cases"] if c.get("writer", "pyav") == "pyav"}
    cold = results.get("cold_start", {}).get("median", {})
    targets = []

    def add(name, value, limit, unit=""):
        if value is not None:
            targets.append({"target": name, "value": value, "limit": limit, "unit": unit,
                            "holds": bool(value <= limit)})

    ten = cases.get("10s_crop512")
    if ten:
        add("10 s speech, 512², RTF", ten["rtf"], 0.25)
        add("10 s speech, 512², total / encode floor", ten["ratio_to_floor"], 2.0, "x")
        add("10 s speech, 512², stages 1+2 share of audio duration", ten["stage12_pct_of_audio"], 2.0, "%")
        add("10 s speech, 512², audio encoder + stages 1+2 share of audio duration",
            ten["encoder_stage12_pct_of_audio"], 3.0, "%")
        add("first streamed chunk (10 s speech, 512², warm process)", ten["first_chunk_s"], 1.0, "s")
    if cold:
        add("cold start (import + from_pretrained)", cold["cold_start_s"], 5.0, "s")
    for api in ("", "_stream"):
        long, mid = cases.get(f"600s_crop512{api}"), cases.get(f"60s_crop512{api}")
        label = "stream()" if api else "__call__"
        if long:
            total = max(long["total_peak_rss_mb"] or 0, long["peak_rss_mb"])
            add(f"600 s speech, 512², {label}: peak RSS (Python + children)", round(total, 1), 2048, "MB")
            if mid:
                add(f"600 s speech, 512², {label}: peak RSS / 60 s peak RSS",
                    round(long["peak_rss_mb"] / mid["peak_rss_mb"], 3), 1.2, "x")
    return targets


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['nproc']} CPU cores ({m['cpu']}), {m['ram_gb']} GB RAM, torch {m['torch']}, "
             f"Python {m['python']}, OpenCV {m['opencv']}, ffmpeg {m['ffmpeg']}; torch threads "
             f"{results['settings']['threads']}, render threads {m.get('render_threads', 1)}; {results['settings']['mode']} run, {results['date']}.", "",
             "| case | writer | frames | runs | wall s | RTF | floor s | total/floor | face | decode | log-mel | phones "
             "| audio encoder | stage 1 | stage 2 | render | encode | other | render ms/frame | CPU s Python + phone worker + ffmpeg "
             "| CPU RTF / 2 cores | peak RSS MB Python (+children: ffmpeg, phone worker) | first chunk s "
             "| total/floor, render free | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in results["cases"]:
        d, s = c["median"], c["median"]["stages_s"]
        lines.append(
            f"| {c['case']} | {c.get('writer', 'pyav')} | {d['frames']} | {d['repeats']} | {d['wall_s']:.2f} | **{d['rtf']:.3f}** | "
            f"{d['floor_s']:.2f} | {d['ratio_to_floor']:.2f} | {s['face']:.2f} | {s['decode']:.2f} | "
            f"{s['logmel']:.2f} | {s['phones']:.2f} | {s['audio_encoder']:.2f} | {s['stage1']:.2f} | {s['stage2']:.2f} | "
            f"{s['render'] + s['render_prepare']:.2f} | {s['encode']:.2f} | {d['other_s']:.2f} | "
            f"{d['render_ms_per_frame']:.1f} | {d['cpu_self_s']:.1f} + {d.get('phone_worker_cpu_s') or 0:.1f} + "
            f"{d['ffmpeg_cpu_s']:.1f} | "
            f"{d['rtf_idle_2core_bound']:.3f} | {d['peak_rss_mb']:.0f} (+{d['ffmpeg_peak_rss_mb']:.0f}) | "
            f"{d['first_chunk_s']:.2f} | "
            f"{'%.2f' % d['render_free_ratio_to_floor'] if d.get('render_free_ratio_to_floor') else '-'} | "
            f"{d['loadavg_before']:.1f} |")
    ab = [c for c in results["cases"] if len(c["median"].get("floor_ab_s", {})) > 1]
    if ab:
        names = list(ab[0]["median"]["floor_ab_s"])
        lines += ["", "Encode floor A/B (the same frames and audio through each writer, alternating in one "
                      "process; median seconds, CPU seconds of the process and its children):", "",
                  "| case | writer of the run | " + " | ".join(f"{n} floor s (CPU s)" for n in names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for c in ab:
            d = c["median"]
            lines.append(f"| {c['case']} | {c.get('writer', 'pyav')} | " + " | ".join(
                f"{d['floor_ab_s'][n]:.2f} ({d['floor_ab_cpu_s'][n]:.1f})" for n in names) + " |")
    cold = results.get("cold_start", {}).get("median")
    if cold:
        lines += ["", f"Cold start (fresh interpreter, median of {results['cold_start']['repeats']}): import "
                      f"{cold['import_s']:.2f} s (torch {cold['import_torch_s']:.2f} s, diffusers' pipeline_utils "
                      f"{cold['import_diffusers_s']:.2f} s -- of which torch._dynamo {cold.get('import_dynamo_s', 0):.2f} s "
                      f"and transformers {cold.get('import_transformers_s', 0):.2f} s --, the rest of moda_hub "
                      f"{cold['import_moda_hub_rest_s']:.2f} s) "
                      f"+ from_pretrained {cold['from_pretrained_s']:.2f} s = **{cold['cold_start_s']:.2f} s** "
                      f"(process spawn to exit {cold['process_wall_s']:.2f} s)."]
    if results.get("targets"):
        lines += ["", "| target | limit | measured | holds |", "|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | <= {t['limit']}{t['unit']} | {t['value']}{t['unit']} | "
                         f"{'yes' if t['holds'] else '**no**'} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 s and 10 s, one run each, one cold start")
    ap.add_argument("--cases", nargs="*", help="only these cases, e.g. 10s_crop512 600s_crop512_stream")
    ap.add_argument("--repeats", type=int, default=None, help="runs per case (default 3; 1 for 600 s)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the measured process")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/speed_<mode>.json)")
    ap.add_argument("--profile", default=None, help="cProfile one run of this case; writes a .txt next to --out")
    ap.add_argument("--writers", nargs="+", default=["pyav"], choices=WRITERS,
                    help="MP4 writers to compare: each case runs with each, alternating (A B A B ...), and "
                         "every run times the encode floor of all of them in its own process")
    ap.add_argument("--floor-repeats", type=int, default=2, help="floor timings per writer in each run")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        with open(args.worker) as f:
            spec = json.load(f)
        print(json.dumps(worker(spec)))
        return 0

    if not os.path.exists(os.path.join(args.model, "model_index.json")):
        print(f"error: no pipeline at {args.model} — build it with `make train`", file=sys.stderr)
        return 2
    durations = (1, 10) if args.quick else DURATIONS
    inputs = make_inputs(DURATIONS)
    plan = []
    for d in durations:
        for layout in ("crop512", "full1024"):
            plan.append((f"{d}s_{layout}", d, layout, "call"))
    plan.append(("10s_full12mp", 10, "full12mp", "call"))
    if not args.quick:
        plan += [("60s_crop512_stream", 60, "crop512", "stream"), ("600s_crop512_stream", 600, "crop512", "stream")]
    if args.profile:
        plan = [p for p in plan if p[0] == args.profile]
    elif args.cases:
        plan = [p for p in plan if p[0] in args.cases]
    mode = "profile" if args.profile else ("quick" if args.quick else ("partial" if args.cases else "full"))
    results = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
               "settings": {"mode": mode, "threads": args.threads, "fps": FPS, "model": os.path.relpath(args.model, ROOT),
                            "speech": f"espeak-ng en-us 165 wpm, {inputs['base_seconds']} s clip tiled with 0.3 s pauses",
                            "encoder": "Mp4Writer defaults: libx264 veryfast crf 20 yuv420p + AAC 96k",
                            "writers": args.writers},
               "cases": []}
    for name, d, layout, api in plan:
        image, size = LAYOUTS[layout]
        repeats = 1 if (args.quick or args.profile) else (args.repeats or (1 if d >= 600 or api == "stream" else 3))
        spec = {"case": name, "model": args.model, "threads": args.threads, "image": inputs[image],
                "audio": inputs[f"{d}s"], "warmup_audio": inputs["1s"], "seconds": d, "output_size": size,
                "api": api, "profile": bool(args.profile), "floor_writers": args.writers,
                "floor_repeats": args.floor_repeats}
        by_writer = {w: [] for w in args.writers}
        for r in range(repeats):
            for writer in args.writers:                 # A B A B ...: both see the same load
                run = run_case({**spec, "writer": writer})
                runs = by_writer[writer]
                runs.append(run)
                print(f"{name} [{writer}] run {r + 1}/{repeats}: wall {run['wall_s']:.2f} s, RTF {run['rtf']:.3f}, "
                      f"floor {run['floor_s']:.2f} s, render {run['stages_s']['render']:.2f} s, peak RSS "
                      f"{run['peak_rss_mb']:.0f} MB, first chunk {run['first_chunk_s']:.2f} s, load "
                      f"{run['loadavg_before']}", flush=True)
        if args.profile:
            path = args.out or os.path.join(RESULTS, f"profile_{name}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(f"# cProfile of one timed run of {name} (wall {runs[0]['wall_s']} s)\n\n")
                f.write(runs[0].pop("profile_tottime") + "\n\n" + runs[0].pop("profile_cumulative"))
            print(f"wrote {path}")
            return 0
        for writer, runs in by_writer.items():
            results["cases"].append({"case": name, "writer": writer, "api": api, "layout": layout, "seconds": d,
                                     "runs": runs, "median": summarise(runs)})
    colds = [cold_start(args.model, args.threads) for _ in range(1 if args.quick else 3)]
    results["cold_start"] = {"repeats": len(colds), "runs": colds,
                             "median": {k: round(statistics.median(c[k] for c in colds), 3) for k in colds[0]}}
    results["targets"] = check_targets(results)
    out = args.out or os.path.join(RESULTS, f"speed_{mode}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    table = markdown(results)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
