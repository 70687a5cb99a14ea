"""Where the CPU time of a 10 s, 512² call goes, and the wall time two cores allow (issue 19).

In one warm process, each repetition measures, alternating the writers (A B A B ...) so they see
the same load:

- ``call``: the whole ``pipe(image, audio, output_type="mp4")`` with that writer: wall time and CPU
  seconds of this process + its children (the ffmpeg of the pipe writer) + the phone worker;
- ``stages``: the same call with ``output_type="landmarks"`` (audio, features, stages 1-2; no
  frames, no video);
- ``render``: ``renderer.prepare`` + ``render`` of that call's landmarks in 32-frame chunks, no
  writer;
- ``encode``: the call's own frames (cycled from its first 64) through the writer alone: the
  encode floor of ``bench_speed.py``.

Two cores give at most 2 CPU seconds a second, so a call needs at least ``call CPU / 2`` of wall
time; ``total / floor`` cannot go below ``(call CPU / 2) / floor wall``. The parts' CPU add up to
about the call's (the rest is what running them side by side costs). CPU seconds are far less
sensitive to other users of a shared machine than wall times; the load average is recorded.

Usage::

    .venv/bin/python benchmarks/cpu_split.py --repeats 3      # -> results/cpu_split.json + .md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_speed as bench  # noqa: E402  (inputs, writers, CPU clocks: one definition)

SECONDS = 10


def _cpu() -> float:
    """CPU seconds so far of this process, its finished children and the phone worker."""
    me, kids, worker = bench._cpu_times()
    return me + kids + worker


def _timed(fn):
    c0, t0 = _cpu(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, _cpu() - c0


def measure(repeats: int, writers: list) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import moda_hub.pipeline
    from moda_hub import ModaPipeline
    from moda_hub.video import iter_video_frames

    inputs = bench.make_inputs([1, SECONDS])
    image, audio = inputs["portrait_512.png"], inputs[f"{SECONDS}s"]
    classes = {name: bench.writer_class(name) for name in writers}
    pipe = ModaPipeline.from_pretrained(bench.DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    tmp = tempfile.mkdtemp(prefix="moda-cpu-split-")
    out = os.path.join(tmp, "out.mp4")
    kw = dict(image=image, output_size=512)
    pipe(audio=inputs["1s"], output_type="mp4", output_path=out, **kw)        # warm-up (lazy starts)
    runs = {name: [] for name in writers}
    for _ in range(repeats):
        for name, cls in classes.items():
            moda_hub.pipeline.Mp4Writer = cls
            load = os.getloadavg()[0]
            result, wall, cpu = _timed(lambda: pipe(audio=audio, output_type="mp4", output_path=out,
                                                    generator=torch.Generator().manual_seed(0), **kw))
            landmarks, torso = result.landmarks, None
            _, stages_wall, stages_cpu = _timed(lambda: pipe(audio=audio, output_type="landmarks",
                                                             generator=torch.Generator().manual_seed(0), **kw))

            def render():
                prepared = pipe.renderer.prepare(*_subject(pipe, image), output_size=512)
                for i in range(0, len(landmarks), 32):
                    pipe.renderer.render(prepared, landmarks[i:i + 32], torso)
            _, render_wall, render_cpu = _timed(render)
            sample = np.stack(list(iter_video_frames(out, max_frames=64)))

            def encode():
                with cls(os.path.join(tmp, "floor.mp4"), fps=bench.FPS, audio=result.audio,
                         sample_rate=bench.SAMPLE_RATE) as w:
                    for i in range(0, len(landmarks), 32):
                        w.write(sample[np.arange(i, min(i + 32, len(landmarks))) % len(sample)])
            _, floor_wall, floor_cpu = _timed(encode)
            run = dict(load=round(load, 2), wall=round(wall, 3), cpu=round(cpu, 3),
                       stages_cpu=round(stages_cpu, 3), render_cpu=round(render_cpu, 3), render_wall=round(render_wall, 3),
                       encode_cpu=round(floor_cpu, 3), floor=round(floor_wall, 3))
            runs[name].append(run)
            print(name, json.dumps(run), flush=True)
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        parts = med["stages_cpu"] + med["render_cpu"] + med["encode_cpu"]
        summary[name] = dict(med, parts_cpu=round(parts, 3), min_wall=round(med["cpu"] / 2, 3),
                             ratio=round(med["wall"] / med["floor"], 2),
                             ratio_bound=round(med["cpu"] / 2 / med["floor"], 2),
                             cores_used=round(med["cpu"] / med["wall"], 2))
    return {"machine": bench.machine_info(), "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": SECONDS,
            "repeats": repeats, "runs": runs, "median": summary}


def _subject(pipe, image):
    """(portrait RGB, its landmarks in pixels), as the pipeline prepares them."""
    from moda_hub.face.subject import prepare_subject
    subject = prepare_subject(image)
    return subject.image, subject.landmarks_px


def markdown(res: dict) -> str:
    rows = ["| writer | load | call wall s | call CPU s | stages CPU | render CPU | encode CPU (floor) | parts sum "
            "| wall >= CPU / 2 | floor wall s | total / floor | bound: (CPU / 2) / floor | cores used |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in res["median"].items():
        rows.append(f"| {name} | {m['load']:.1f} | {m['wall']:.2f} | {m['cpu']:.2f} | {m['stages_cpu']:.2f} | "
                    f"{m['render_cpu']:.2f} | {m['encode_cpu']:.2f} | {m['parts_cpu']:.2f} | {m['min_wall']:.2f} | "
                    f"{m['floor']:.2f} | {m['ratio']:.2f} | {m['ratio_bound']:.2f} | {m['cores_used']:.2f} |")
    return (f"{res['date']}, {res['seconds']} s of speech at 512², medians of {res['repeats']} alternations; "
            f"{res['machine'].get('cpu', '')}\n\n" + "\n".join(rows) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--writers", nargs="+", default=list(bench.WRITERS), choices=bench.WRITERS)
    ap.add_argument("--out", default=os.path.join(bench.RESULTS, "cpu_split.json"))
    args = ap.parse_args(argv)
    res = measure(args.repeats, args.writers)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    table = markdown(res)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
