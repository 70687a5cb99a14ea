"""moda-hub Space: a portrait + speech (or text) -> a talking-portrait video, in the browser.

Run it:
    python app.py                                  # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 7860       # as the Docker Space does
    make app

Settings (queue, limits, output folder ...) are in ``moda_hub/space/config.py``, one
``MODA_*`` environment variable each. The API endpoint ``/animate`` returns the MP4:

    from gradio_client import Client, handle_file
    Client("http://127.0.0.1:7860/").predict(portrait=handle_file("face.jpg"),
        audio=handle_file("speech.wav"), seed=0, api_name="/animate")   # -> path of the MP4
"""
import os

# No traffic to analytics or telemetry servers: set before gradio or hub code is imported.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from moda_hub.errors import InputTooLongError, InvalidParameterError, ModaError  # noqa: E402
from moda_hub.face import detect_faces, face_box  # noqa: E402
from moda_hub.face.image import load_image  # noqa: E402
from moda_hub.face.subject import MAX_IMAGE_SIDE  # noqa: E402
from moda_hub.options import OPTIONS, GenerateOptions  # noqa: E402
from moda_hub.pipeline import ModaPipeline  # noqa: E402
from moda_hub.space import (AnimateOptions, OutputStore, SpaceConfig, animate, faces_preview,  # noqa: E402
                            load_speech, motion_figure)
from moda_hub.space.animate import MAX_SEED, MAX_VARIATIONS  # noqa: E402
from moda_hub.speech.espeak import list_voices  # noqa: E402

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT / "examples"
DEFAULTS = GenerateOptions()
log = logging.getLogger("moda.app")

# English voices first (label, espeak-ng voice); any other espeak-ng voice can be typed in.
VOICES = [("English (US), male", "en-us"), ("English (US), female", "en-us+f3"),
          ("English (US), male 3", "en-us+m3"), ("English (UK), male", "en"),
          ("English (UK), female", "en+f2"), ("English (Scotland)", "en-GB-scotland"),
          ("English (Caribbean)", "en-029")]
#: output_size choices; -1 = automatic (None: the full image up to 1 megapixel, else a 512 px crop)
SIZES = [("Automatic (full image up to 1 MP, else 512 px crop)", -1), ("256 px face crop", 256),
         ("512 px face crop", 512), ("Full image (pasted back)", 0)]
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],        # local fonts only:
                       font_mono=["ui-monospace", "Consolas", "monospace"])    # no font CDN requests
CSS = "#seed-row {align-items: end}"


# ---------------------------------------------------------------------------------- errors
def _scrub(message: str) -> str:
    """Replace quoted server paths ('/tmp/gradio/…/speech.wav') by the file name."""
    return re.sub(r"'(?:/[^'/]+)+/([^'/]+)'", r"'\1'", message)


class RequestCancelled(Exception):
    """The client of a running request went away (closed the page, dropped the connection or
    cancelled): the work stops at the next chunk, freeing its slot; its folder is removed."""


def client_watch():
    """A function that says whether the client of the request this handler serves is gone.

    gradio keeps running a handler's thread after its client disconnects (it only marks the queue
    event ``alive = False``) or cancels (the event leaves the active jobs), so a dropped request
    would hold its concurrency slot to the end. Handlers call this at each progress step and stop.
    Outside a queued request (direct calls, tests) it always says "still here"."""
    from gradio.context import LocalContext

    event_id = LocalContext.event_id.get(None)
    queue = getattr(LocalContext.blocks.get(None), "_queue", None)
    if event_id is None or queue is None:
        return lambda: False

    def gone() -> bool:
        for jobs in list(queue.active_jobs):
            for event in jobs or ():
                if event._id == event_id:
                    return not event.alive
        return True                                   # no longer an active job: cancelled

    return gone


def watched(progress, gone):
    """``progress(fraction, desc)`` that first raises RequestCancelled when the client is gone."""
    def report(fraction: float, desc: str) -> None:
        if gone():
            raise RequestCancelled("the client went away")
        progress(fraction, desc=desc)
    return report


@contextlib.contextmanager
def user_errors(cfg: SpaceConfig):
    """ModaError -> gr.Error with its message (shown in the page); anything else -> a short
    gr.Error and the traceback in the server log. The server keeps serving either way."""
    try:
        yield
    except gr.Error:
        raise
    except RequestCancelled:
        log.info("request cancelled: its client went away; work stopped, folder removed")
        raise gr.Error("the request was cancelled", print_exception=False)
    except InputTooLongError as err:
        what = _scrub(str(err)).split(" — ")[0]
        raise gr.Error(f"{what} — this Space accepts up to {cfg.max_audio_seconds:g} s of speech: trim "
                       "the audio or shorten the text", print_exception=False)
    except ModaError as err:
        log.info("request refused: %s", err)
        message = _scrub(str(err)).replace("or None for the largest", "or -1 for the largest")
        raise gr.Error(message, print_exception=False)
    except Exception as err:  # a bug: keep the details in the log, not in the page
        log.exception("request failed")
        raise gr.Error(f"unexpected error ({type(err).__name__}) — the server log has the details; "
                       "please report it", print_exception=False)


# ---------------------------------------------------------------------------------- handlers
def _options(seed, temperature, variations, fps, output_size, mouth_scale, head_motion_scale,
             blink_rate, still, face_index, expression_scale=1.0) -> AnimateOptions:
    def whole(name, value):
        if value is None or float(value) != int(value):
            raise InvalidParameterError(f"{name}={value!r} — use a whole number")
        return int(value)

    face_index = None if face_index is None or int(face_index) < 0 else whole("face index", face_index)
    output_size = None if output_size is None or int(output_size) < 0 else whole("output size", output_size)
    return AnimateOptions(seed=whole("seed", seed), temperature=float(temperature),
                          variations=whole("variations", variations), fps=whole("fps", fps),
                          output_size=output_size, mouth_scale=float(mouth_scale),
                          head_motion_scale=float(head_motion_scale), blink_rate=float(blink_rate),
                          still=bool(still), face_index=face_index, expression_scale=float(expression_scale))


def _check_portrait(portrait) -> None:
    if portrait is None:
        raise InvalidParameterError("no portrait — upload a photo with a face (or take one with the webcam)")


def make_handlers(pipe, cfg: SpaceConfig, store: OutputStore):
    """The functions behind the page's events, bound to one pipeline and configuration."""

    def generate(portrait, audio, text, source, voice, speech_rate, seed, temperature, variations, fps,
                 output_size, mouth_scale, head_motion_scale, blink_rate, still, face_index, expression_scale,
                 progress=gr.Progress()):
        with user_errors(cfg):
            _check_portrait(portrait)
            # the open tab's speech, or the other tab's when that one is empty
            has_text = bool(text and text.strip())
            use_text = has_text and (source == "text" or audio is None)
            opts = _options(seed, temperature, variations, fps, output_size, mouth_scale,
                            head_motion_scale, blink_rate, still, face_index, expression_scale)
            gone = client_watch()
            progress(0.0, desc="reading the speech")
            wav = load_speech(None if use_text else audio, text if use_text else None, voice=voice,
                              speech_rate=speech_rate, max_seconds=cfg.max_audio_seconds)
            with store.request_dir() as folder:      # removed at once if the request fails or is cancelled
                results = animate(pipe, portrait, wav, opts, folder, progress=watched(progress, gone))
            figure = motion_figure(results, wav)
        gallery = [(r.video_path, f"seed {r.seed}") for r in results]
        return (results[0].video_path, gr.Gallery(value=gallery, visible=len(results) > 1),
                results[0].mesh_video_path, figure, [r.npz_path for r in results])

    def animate_api(portrait, audio=None, text=None, seed=DEFAULTS.seed, temperature=DEFAULTS.temperature,
                    fps=DEFAULTS.fps, output_size=-1, mouth_scale=DEFAULTS.mouth_scale,
                    head_motion_scale=DEFAULTS.head_motion_scale, blink_rate=DEFAULTS.blink_rate,
                    still=DEFAULTS.still, face_index=-1, voice=DEFAULTS.voice, speech_rate=DEFAULTS.speech_rate,
                    expression_scale=DEFAULTS.expression_scale, progress=gr.Progress()):
        """One video (MP4 with the speech) of `portrait` saying `audio` or `text` (give one).
        face_index -1 = the largest face; output_size 256 / 512 (face crop), 0 (full image) or -1
        (automatic: the full image up to 1 megapixel, else a 512 crop);
        expression_scale 1 = the portrait's expression as photographed, 0 = a neutral mouth and brows."""
        with user_errors(cfg):
            _check_portrait(portrait)
            opts = _options(seed, temperature, 1, fps, output_size, mouth_scale, head_motion_scale,
                            blink_rate, still, face_index, expression_scale)
            gone = client_watch()
            wav = load_speech(audio, text, voice=voice, speech_rate=speech_rate,
                              max_seconds=cfg.max_audio_seconds)
            with store.request_dir() as folder:
                result = animate(pipe, portrait, wav, opts, folder, mesh_preview=False, save_npz=False,
                                 progress=watched(progress, gone))[0]
        return result.video_path

    def find_faces(portrait, face_index):
        """New portrait -> its faces (kept in a State), the numbered preview, a hint."""
        rgb = _preview_image(portrait)
        if rgb is None:
            return [], None, gr.Number(info="-1 = the largest face")
        faces = detect_faces(rgb)
        if not faces:
            gr.Warning("No face found in this image — use a frontal portrait where the face covers "
                       "at least 10% of the image.")
        n = len(faces)
        info = f"{n} face{'s' if n != 1 else ''} found, numbered left to right; -1 = the largest"
        return faces, draw_faces(rgb, faces, face_index), gr.Number(info=info)

    def draw_faces(portrait, faces, face_index):
        rgb = portrait if isinstance(portrait, np.ndarray) else _preview_image(portrait)
        if rgb is None:
            return None
        chosen = None
        if faces:
            if face_index is None or face_index < 0:
                chosen = max(range(len(faces)), key=lambda i: _area(faces[i]))
            elif face_index < len(faces):
                chosen = int(face_index)
        return faces_preview(rgb, faces, chosen=chosen)

    return generate, animate_api, find_faces, draw_faces


def _preview_image(portrait):
    """The uploaded portrait decoded as the pipeline decodes it, or None (nothing uploaded, or a file
    that is not a usable image: the warning says why, Generate gives the full message)."""
    if portrait is None:
        return None
    try:
        return load_image(portrait, max_side=MAX_IMAGE_SIDE)
    except ModaError as err:
        gr.Warning(_scrub(str(err)))
        return None


def _area(face) -> float:
    b = face_box(face)
    return (b.x1 - b.x0) * (b.y1 - b.y0)


def voice_choices():
    """VOICES, then every other espeak-ng voice (when espeak-ng is installed)."""
    choices = list(VOICES)
    try:
        known = {v.lower() for _, v in choices}
        choices += [(v.name, v.key) for v in list_voices() if v.key.lower() not in known]
    except Exception as err:  # espeak-ng missing: text input will say so when used
        log.warning("espeak-ng voices unavailable: %s", err)
    return choices


# ---------------------------------------------------------------------------------- uploads
def unopened_uploads(image: gr.Image) -> gr.Image:
    """Make a ``gr.Image(type="filepath")`` hand its upload to the app unopened: the app decodes it
    with :func:`moda_hub.face.image.load_image`, so a text file, a truncated file or a decompression
    bomb gets the app's own message (and the pixel-count check from the header), never a gradio
    traceback. Webcam and clipboard captures are uploaded files too. (Set on the instance: a
    subclass of a gradio component makes gradio write a .pyi stub next to this file.)"""
    opened = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return opened(payload)                       # a base64 data URL: gradio writes it to its cache

    image.preprocess = preprocess
    return image


def _upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return os.path.realpath(get_upload_folder())


def check_file_inputs(block_fn, inputs) -> None:
    """Every file input of a request must be a file uploaded to this server (gradio's upload folder)
    or nothing: a plain string ("/etc/passwd"), a URL, or a path anywhere else is refused with
    gr.Error naming the input — before gradio or the app opens anything."""
    upload = _upload_folder()
    for block, value in zip(block_fn.inputs, inputs):
        if not isinstance(block, (gr.Image, gr.Audio, gr.File, gr.Video)) or value is None:
            continue
        name = (getattr(block, "label", None) or "a file input").split(" (")[0].lower()
        path = value.get("path") if isinstance(value, dict) else None
        url = value.get("url") if isinstance(value, dict) else None
        data_url = isinstance(url, str) and url.startswith("data:") and not path
        inside = isinstance(path, str) and os.path.isabs(path) and \
            os.path.realpath(path).startswith(upload + os.sep)
        if not (inside or data_url):
            raise gr.Error(f"{name}: only files uploaded to this server are read — upload the file itself "
                           "(with gradio_client: handle_file('photo.jpg')), not a path or URL", print_exception=False)


class SpaceBlocks(gr.Blocks):
    """``gr.Blocks`` whose input stage fails with the app's own one-line messages: file inputs are
    checked first (:func:`check_file_inputs`), and anything gradio's own preprocessing raises
    (an upload that does not fit its component) becomes a gr.Error saying what to upload."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        check_file_inputs(block_fn, inputs)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception as err:                    # noqa: BLE001 - gradio raises many kinds here
            log.info("upload refused: %s: %s", type(err).__name__, err)
            raise gr.Error("an upload could not be read — upload a JPEG, PNG or WebP portrait and a speech "
                           "file (wav, mp3, m4a, flac, ogg, webm)", print_exception=False) from None


# ---------------------------------------------------------------------------------- page
def build_demo(pipe, cfg: SpaceConfig) -> gr.Blocks:
    """The page: inputs and controls on the left, results on the right."""
    store = OutputStore(cfg.output_dir, ttl_seconds=cfg.output_ttl_minutes * 60, max_kept=cfg.max_kept_requests)
    store.start_sweeping()          # expired request folders go even on an idle server
    generate, animate_api, find_faces, draw_faces = make_handlers(pipe, cfg, store)
    ttl = int(cfg.output_ttl_minutes * 60)
    with SpaceBlocks(title="moda-hub: talking portrait", delete_cache=(max(60, ttl // 4), max(ttl, 1))) as demo:
        gr.Markdown(
            "## moda-hub — one photo + speech → a talking portrait\n"
            "MODA (ICCV 2023) on a plain CPU. **1.** Upload a portrait or take a webcam photo. "
            "**2.** Upload or record speech, or type text to be spoken. **3.** Generate. "
            f"Speech up to {cfg.max_audio_seconds:g} s, uploads up to {cfg.max_upload_mb:g} MB.")
        faces_state = gr.State([])
        source = gr.State("audio")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    portrait = unopened_uploads(gr.Image(label="Portrait", type="filepath", image_mode=None,
                                                         sources=["upload", "webcam", "clipboard"], height=300,
                                                         elem_id="portrait"))
                    preview = gr.Image(label="Detected faces", interactive=False, height=300,
                                       elem_id="faces-preview")
                with gr.Tabs():
                    with gr.Tab("Speech", id="audio") as audio_tab:
                        audio = gr.Audio(label="Speech (upload or record)", type="filepath",
                                         sources=["upload", "microphone"], elem_id="speech")
                    with gr.Tab("Text", id="text") as text_tab:
                        text = gr.Textbox(label="Text to speak (espeak-ng)", lines=3, max_length=2000,
                                          placeholder="Hello! I am a talking portrait.", elem_id="text")
                        with gr.Row():
                            voice = gr.Dropdown(voice_choices(), value=DEFAULTS.voice, label="Voice",
                                                allow_custom_value=True)
                            speech_rate = gr.Slider(*OPTIONS["speech_rate"].range, value=DEFAULTS.speech_rate,
                                                    step=5, precision=0, label="Speaking rate (words/min)")
                gr.Examples([[str(EXAMPLES / "portrait.png"), str(EXAMPLES / "speech.wav")]],
                            inputs=[portrait, audio], label="Example")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Sampling", open=True):
                    with gr.Row(elem_id="seed-row"):
                        seed = gr.Number(DEFAULTS.seed, label="Seed (blinks and head motion)", precision=0,
                                         minimum=OPTIONS["seed"].range[0], maximum=MAX_SEED, elem_id="seed")
                        random_seed = gr.Button("Random seed", elem_id="random-seed", scale=0, size="md")
                    temperature = gr.Slider(*OPTIONS["temperature"].range, value=DEFAULTS.temperature, step=0.05,
                                            label="Temperature",
                                            info="0 = the mean motion; higher = livelier")
                    variations = gr.Slider(1, MAX_VARIATIONS, value=1, step=1, precision=0, label="Variations",
                                           info="videos with seeds seed, seed+1, …", elem_id="num-variations")
                with gr.Accordion("Render", open=True):
                    with gr.Row():
                        fps = gr.Radio(list(OPTIONS["fps"].choices), value=DEFAULTS.fps, label="Frames per second")
                        output_size = gr.Radio(SIZES, value=-1 if DEFAULTS.output_size is None else DEFAULTS.output_size,
                                               label="Output size")
                    mouth_scale = gr.Slider(*OPTIONS["mouth_scale"].range, value=DEFAULTS.mouth_scale, step=0.05,
                                            label="Mouth amplitude")
                    expression_scale = gr.Slider(*OPTIONS["expression_scale"].range, value=DEFAULTS.expression_scale,
                                                 step=0.05, label="Expression kept",
                                                 info="1 = the portrait's own smile or frown as photographed; "
                                                      "0 = a neutral mouth and brows", elem_id="expression-scale")
                    head_motion_scale = gr.Slider(*OPTIONS["head_motion_scale"].range, value=DEFAULTS.head_motion_scale,
                                                  step=0.05, label="Head motion")
                    blink_rate = gr.Slider(*OPTIONS["blink_rate"].range, value=DEFAULTS.blink_rate, step=1,
                                           label="Blinks per minute")
                    with gr.Row():
                        still = gr.Checkbox(DEFAULTS.still, label="Still (head and body do not move)")
                        face_index = gr.Number(-1, label="Face index", precision=0, minimum=-1,
                                               info="-1 = the largest face", elem_id="face-index")
            with gr.Column(scale=1):
                video = gr.Video(label="Talking portrait", elem_id="video", height=420)
                gallery = gr.Gallery(label="Variations", columns=2, height=330, object_fit="contain",
                                     visible=False, elem_id="variations")
                mesh_video = gr.Video(label="Rendered frame | face mesh", elem_id="mesh-video", height=300)
                plot = gr.Plot(label="Motion over time", show_label=False, elem_id="plot")
                npz = gr.File(label="Landmarks (.npz: landmarks, lip, eye, head, torso, fps, seed)",
                              file_count="multiple", elem_id="landmarks")
                api_video = gr.Video(visible=False)

        # events: faces preview, speech source, seed, generate, API (the page's Generate and the
        # /animate endpoint share one concurrency limit: at most cfg.concurrency videos at once)
        portrait.change(find_faces, [portrait, face_index], [faces_state, preview, face_index],
                        api_visibility="private")
        face_index.change(draw_faces, [portrait, faces_state, face_index], preview, api_visibility="private")
        audio_tab.select(lambda: "audio", None, source, api_visibility="private", queue=False)
        text_tab.select(lambda: "text", None, source, api_visibility="private", queue=False)
        random_seed.click(lambda: random.randrange(2 ** 31), None, seed, api_visibility="private", queue=False)
        run.click(generate, [portrait, audio, text, source, voice, speech_rate, seed, temperature, variations,
                             fps, output_size, mouth_scale, head_motion_scale, blink_rate, still, face_index,
                             expression_scale],
                  [video, gallery, mesh_video, plot, npz], api_name="generate", api_visibility="undocumented",
                  concurrency_id="animate", concurrency_limit=cfg.concurrency)
        gr.Button(visible=False).click(
            animate_api, [portrait, audio, text, seed, temperature, fps, output_size, mouth_scale,
                          head_motion_scale, blink_rate, still, face_index, voice, speech_rate, expression_scale],
            api_video, api_name="animate", concurrency_id="animate", concurrency_limit=cfg.concurrency)
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.max_queue)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="moda-hub Gradio Space")
    p.add_argument("--host", help="address to listen on (default MODA_HOST, GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default MODA_PORT, GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--model", help="pipeline folder or Hub id (default MODA_MODEL or the shipped pretrained/moda-base)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        cfg = SpaceConfig.from_env(host=args.host, port=args.port, model=args.model)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        pipe = ModaPipeline.from_pretrained(cfg.model)    # a missing folder or weights: WeightsError, one line
    except ModaError as err:
        raise SystemExit(f"error: {err} — run `make train`, or set MODA_MODEL / --model to a pipeline folder or "
                         "Hub repo id")
    pipe.set_progress_bar_config(disable=True)
    demo = build_demo(pipe, cfg)
    log.info("serving %s on http://%s:%d (concurrency %d, queue %d)", cfg.model, cfg.host, cfg.port,
             cfg.concurrency, cfg.max_queue)
    demo.launch(server_name=cfg.host, server_port=cfg.port, max_file_size=cfg.max_upload_bytes,
                allowed_paths=[cfg.output_dir, str(EXAMPLES)], theme=THEME, css=CSS, ssr_mode=False,
                footer_links=["api"], show_error=False)


if __name__ == "__main__":
    sys.exit(main())
