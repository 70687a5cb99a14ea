"""Look at it: many portraits, one speech clip, one contact-sheet PNG and automatic checks per video.

    python benchmarks/contact_sheet.py                         # ~2-4 min on 2 cores
    python benchmarks/contact_sheet.py --seconds 2 --sizes 256 0 --out outputs/sheet

Portraits (one row each):

- ``examples/portrait.png`` (bundled);
- every image in ``../shared/eval/dev/portraits`` when that folder exists (``--portraits`` to
  point elsewhere; measuring only, never committed);
- crops this script makes from bundled faces (``skimage.data.astronaut()``, matplotlib's
  ``grace_hopper.jpg``, ``skimage.data.lfw_subset()``): the face filling the frame, the face
  touching each border (left, top, right, bottom), a small face in a large image, a group photo
  (several faces composed side by side; the largest is animated), a 3000 px photo.

Each portrait is animated with the same speech (``examples/speech.wav``, the first ``--seconds``)
and seed at every ``--sizes`` (256 / 512 face crops, 0 = the full image pasted back). A row
shows the photo, then per size three frames (a quarter, half and three quarters in) and a zoom
of the mouth at its widest, with the checks written under them
(:mod:`moda_hub.render.frame_checks`, on the rendered frames before H.264):

- ``streak``: longest run of replicated rows / columns outside the face (px; >= 6 is a streak),
  next to the same check on the still photo as the canvas shows it (``photo``: what the photo has
  of its own, e.g. a heavily enlarged or blurred one);
- ``seam``: paste-back seam (full image only), colour / gradient jump along the canvas boundary
  above the photo's own, 0-255 (~3 and more is visible);
- ``flicker``: mean frame-to-frame change far from the face (2.2 x the face hull), 0-255;
- ``depth``: the mouth's movement depth, 95th - 5th percentile of the inner-lip gap / eye-corner
  distance, with MediaPipe tracking the rendered video again (``gen`` = of the generated
  landmarks).

Writes ``<out>/contact_sheet.png`` (plus ``contact_sheet_<n>.png`` when many rows) and
``<out>/contact_sheet.json`` with every check.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

DEV_PORTRAITS = os.path.join(ROOT, "..", "shared", "eval", "dev", "portraits")
TILE = 200                     # px, side of each tile on the sheet
ROWS_PER_SHEET = 12


# ----------------------------------------------------------------------------- portraits
def _face_box(image: np.ndarray):
    from moda_hub.face.landmarks import detect_faces, face_box
    b = face_box(detect_faces(image)[0])
    return int(b.x0), int(b.y0), int(np.ceil(b.x1)), int(np.ceil(b.y1))


def made_up_portraits() -> dict:
    """name -> (H, W, 3) uint8: crops and compositions of the bundled faces (see module docstring)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    astro = skimage.data.astronaut()
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        grace = np.asarray(im.convert("RGB"))
    lfw = skimage.data.lfw_subset()                                 # (200, 25, 25) float 0..1, grey
    x0, y0, x1, y1 = _face_box(astro)
    gx0, gy0, gx1, gy1 = _face_box(grace)
    out = {
        "filling the frame": grace[gy0 - 6:gy1 + 6, gx0 - 6:gx1 + 6],
        "touching left": astro[y0 - 40:y1 + 80, x0:x1 + 100],
        "touching top": astro[y0:y1 + 110, x0 - 60:x1 + 60],
        "touching right": astro[y0 - 40:y1 + 80, x0 - 100:x1],
        "touching bottom": astro[y0 - 70:y1, x0 - 60:x1 + 60],
    }
    # a small face (~80 px) in a large (1600 x 1200) image: the astronaut shrunk onto a wide,
    # blurred enlargement of her own background
    big = cv2.GaussianBlur(cv2.resize(astro[:, 300:], (1600, 1200), interpolation=cv2.INTER_CUBIC), (0, 0), 4)
    small = cv2.resize(astro, (420, 420), interpolation=cv2.INTER_AREA)
    big[600:1020, 900:1320] = small
    out["small face, large image"] = big
    # a group photo: four people side by side at one height (two from the LFW subset, enlarged)
    h = 300
    people = [astro[20:400, 110:360], grace[40:520, 60:460]]
    row = [cv2.resize(p, (int(round(p.shape[1] * h / p.shape[0])), h), interpolation=cv2.INTER_AREA) for p in people]
    for i in (0, 7):               # two smaller faces from the LFW subset, standing in the back
        face = (np.clip(lfw[i], 0, 1) * 255).astype(np.uint8)
        face = np.repeat(cv2.resize(face, (110, 110), interpolation=cv2.INTER_CUBIC)[..., None], 3, 2)
        row.append(np.concatenate([np.full((40, 110, 3), 90, np.uint8), face, np.full((h - 150, 110, 3), 90, np.uint8)], 0))
    out["group photo"] = np.concatenate(row, axis=1)
    # a 3000 px photo: Grace Hopper enlarged
    out["3000 px photo"] = cv2.resize(grace, (2560, 3000), interpolation=cv2.INTER_LANCZOS4)
    return out


def all_portraits(portraits_dir: str | None) -> dict:
    from moda_hub.face.image import load_image

    out = {"examples/portrait.png": load_image(os.path.join(ROOT, "examples", "portrait.png"))}
    folder = portraits_dir or DEV_PORTRAITS
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if path.lower().endswith((".jpg", ".jpeg", ".png", ".webp")):
            out["dev/" + os.path.basename(path)] = load_image(path)
    out.update(made_up_portraits())
    return out


# ----------------------------------------------------------------------------- one video
def run_one(pipe, image: np.ndarray, wav: np.ndarray, size: int, seed: int, fps: int,
            expression_scale: float = 1.0) -> dict:
    """Animate, check, and pick the frames to show. Returns checks and (h, w, 3) tiles."""
    import torch
    from moda_hub.face.landmarks import FaceTracker
    from moda_hub.face.subject import prepare_subject
    from moda_hub.render import frame_checks as fc

    t0 = time.perf_counter()
    out = pipe(image=image, audio=(16000, wav), fps=fps, output_size=size, output_type="np",
               expression_scale=expression_scale, generator=torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - t0
    frames = out.frames
    subject = prepare_subject(image)
    prepared = pipe.renderer.prepare(subject.image, subject.landmarks_px, output_size=size)
    lm = prepared.to_output_px(out.landmarks)
    hw = frames.shape[1:3]
    outside = ~fc.face_region(lm[::3], hw)
    streaks = fc.edge_streaks(frames[::3], outside)
    # the same check on the still photo as the canvas sees it: streaks a photo has of its own
    still = subject.image if size == 0 else prepared.image
    streaks_photo = fc.edge_streaks(still, outside)
    far = ~fc.face_region(lm, hw, grow=2.2)
    flicker = fc.flicker_outside_face(frames, far)
    seam = None
    if size == 0:
        b = prepared.box
        seam = fc.seam_jump(frames[::3], subject.image, (b.x0, b.y0, b.x0 + b.width, b.y0 + b.height))
    # tracked again inside the animated face's canvas (a full group photo has other faces; a
    # small face in a large frame is below the tracker's reach once the frame is downscaled)
    b = prepared.box
    x0, y0, x1, y1 = 0, 0, hw[1], hw[0]
    if size == 0:
        x0, y0, x1, y1 = int(b.x0), int(b.y0), int(b.x0) + b.width, int(b.y0) + b.height
    tracked = []
    with FaceTracker() as tracker:
        for f in frames:
            t = tracker.process(np.ascontiguousarray(f[y0:y1, x0:x1]))
            tracked.append(np.full((478, 3), np.nan, np.float32) if t is None else t)
    depth = fc.mouth_depth(np.stack(tracked))
    depth_gen = fc.mouth_depth(out.landmarks)
    T = len(frames)
    picks = [T // 4, T // 2, (3 * T) // 4]
    widest = int(np.nanargmax(np.nan_to_num(np.asarray([
        np.linalg.norm(m[13, :2] - m[14, :2]) for m in lm]), nan=-1)))
    mouth = _mouth_zoom(frames[widest], lm[widest])
    return dict(checks=dict(streak=streaks.longest, streak_rows=streaks.rows, streak_cols=streaks.cols,
                            streak_photo=streaks_photo.longest,
                            seam=seam, flicker=round(flicker, 3), depth=round(depth, 4),
                            depth_generated=round(depth_gen, 4), frames=T, frame_hw=list(hw),
                            seconds=round(seconds, 2),
                            box=[round(float(v), 1) for v in (prepared.box.x0, prepared.box.y0)] +
                                [round(prepared.box.width / prepared.box.scale, 1)]),
                tiles=[frames[i] for i in picks] + [mouth])


def _mouth_zoom(frame: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """A square around the mouth (twice the mouth width), output pixels."""
    c = lm[[61, 291, 13, 14], :2].mean(0)
    half = max(8.0, float(np.linalg.norm(lm[61, :2] - lm[291, :2])))
    x0, y0 = int(max(0, c[0] - half)), int(max(0, c[1] - half))
    x1, y1 = int(min(frame.shape[1], c[0] + half)), int(min(frame.shape[0], c[1] + half))
    return frame[y0:y1, x0:x1]


# ----------------------------------------------------------------------------- the sheet
def _tile(image: np.ndarray, side: int = TILE) -> np.ndarray:
    h, w = image.shape[:2]
    k = side / max(h, w)
    small = cv2.resize(image, (max(1, int(round(w * k))), max(1, int(round(h * k)))),
                       interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)
    out = np.full((side, side, 3), 40, np.uint8)
    y, x = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y:y + small.shape[0], x:x + small.shape[1]] = small
    return out


def _label(text_lines, width: int, height: int = 34, warn: bool = False) -> np.ndarray:
    out = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(text_lines):
        cv2.putText(out, line, (4, 13 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (200, 0, 0) if warn else (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _row(name: str, image: np.ndarray, results: dict) -> np.ndarray:
    cells = [np.concatenate([_tile(image), _label([name[:30], f"{image.shape[1]}x{image.shape[0]}"], TILE)], 0)]
    for size, r in results.items():
        c = r["checks"]
        if "error" in c:
            cells.append(np.concatenate([np.full((TILE, 4 * TILE, 3), 230, np.uint8),
                                         _label([f"size {size}: {c['error'][:90]}"], 4 * TILE, warn=True)], 0))
            continue
        tiles = np.concatenate([_tile(t) for t in r["tiles"]], 1)
        seam = "" if c["seam"] is None else f" seam {c['seam']:.1f}"
        bad = (c["streak"] >= 6 and c["streak"] > c["streak_photo"]) or (c["seam"] or 0) >= 3
        text = [f"size {size or 'full'}: streak {c['streak']} (photo {c['streak_photo']}){seam} "
                f"flicker {c['flicker']:.2f}",
                f"depth {c['depth']:.3f} (gen {c['depth_generated']:.3f})  {c['seconds']:.1f}s"]
        cells.append(np.concatenate([tiles, _label(text, 4 * TILE, warn=bad)], 0))
    return np.concatenate(cells, 1)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(ROOT, "pretrained", "moda-base"))
    parser.add_argument("--portraits", default=None, help="folder of extra portraits (default ../shared/eval/dev/portraits)")
    parser.add_argument("--speech", default=os.path.join(ROOT, "examples", "speech.wav"))
    parser.add_argument("--seconds", type=float, default=3.0, help="speech used, from the start")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--expression-scale", type=float, default=1.0)
    parser.add_argument("--only", nargs="*", default=None, help="portrait names containing one of these")
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "contact_sheet"))
    args = parser.parse_args(argv)

    import torch
    from moda_hub import ModaPipeline
    from moda_hub.speech.audio import load_audio
    from moda_hub.errors import ModaError

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    pipe = ModaPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    wav = load_audio(args.speech, 16000)[: int(args.seconds * 16000)]
    portraits = all_portraits(args.portraits)
    if args.only:
        portraits = {k: v for k, v in portraits.items() if any(s in k for s in args.only)}
    os.makedirs(args.out, exist_ok=True)
    report, rows = {}, []
    for name, image in portraits.items():
        results = {}
        for size in args.sizes:
            try:
                results[size] = run_one(pipe, image, wav, size, args.seed, args.fps, args.expression_scale)
            except ModaError as err:
                results[size] = dict(checks=dict(error=f"{type(err).__name__}: {err}"), tiles=[])
            print(f"{name:28s} size {size:4d}: {results[size]['checks']}", flush=True)
        report[name] = {str(s): r["checks"] for s, r in results.items()}
        rows.append(_row(name, image, results))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    paths = []
    for k in range(0, len(rows), ROWS_PER_SHEET):
        path = os.path.join(args.out, "contact_sheet.png" if k == 0 else f"contact_sheet_{k // ROWS_PER_SHEET + 1}.png")
        cv2.imwrite(path, cv2.cvtColor(np.concatenate(rows[k:k + ROWS_PER_SHEET], 0), cv2.COLOR_RGB2BGR))
        paths.append(path)
    with open(os.path.join(args.out, "contact_sheet.json"), "w") as f:
        json.dump(dict(args=vars(args), portraits=report), f, indent=1)
    print("\n".join(paths))
    return report


if __name__ == "__main__":
    main()
