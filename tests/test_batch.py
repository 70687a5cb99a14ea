"""`moda batch`: one MP4 per manifest row, bad rows reported, resumable, two processes with accelerate."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import skimage.data

from moda_hub.batch import read_manifest, run_batch
from moda_hub.errors import InvalidParameterError
from moda_hub.video import read_video_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "pretrained", "moda-base")
needs_model = pytest.mark.skipif(not os.path.exists(os.path.join(MODEL, "model_index.json")),
                                 reason="pretrained/moda-base is missing — build it with `make train`")


def write_manifest(folder, rows):
    """A manifest in ``folder`` with an astronaut portrait and a face-less image beside it (the images
    are written once: their size and mtime are part of a row's resume key)."""
    if not (folder / "astronaut.png").exists():
        PIL.Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
        PIL.Image.fromarray(np.full((160, 160, 3), 90, np.uint8)).save(folder / "wall.png")
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "audio", "text", "seed", "size", "still"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_manifest_rows_named_by_index_and_bad_cells_become_row_problems(tmp_path):
    path = write_manifest(tmp_path, [
        {"image": "astronaut.png", "text": "Hi.", "seed": "4", "size": "256", "still": "yes"},
        {"image": "astronaut.png", "audio": "a.wav", "text": "both", "seed": "x"},
    ])
    good, bad = read_manifest(path)
    assert good.output == "00000_astronaut_text.mp4" and good.problem is None
    assert good.image == str(tmp_path / "astronaut.png") and good.seed == 4
    assert good.controls == {"output_size": 256, "still": True}
    assert "exactly one of audio or text" in bad.problem and "seed" in bad.problem
    (tmp_path / "typo.csv").write_text("image,txt\na.png,hello\n")
    with pytest.raises(InvalidParameterError, match="unknown columns"):
        read_manifest(tmp_path / "typo.csv")


@needs_model
def test_second_run_skips_finished_rows_and_redoes_a_changed_one(tmp_path):
    from moda_hub import ModaPipeline
    pipe = ModaPipeline.from_pretrained(MODEL)
    rows = [{"image": "astronaut.png", "text": "One.", "size": "256", "seed": "1"},
            {"image": "astronaut.png", "text": "Two.", "size": "256", "seed": "2"}]
    manifest = write_manifest(tmp_path, rows)
    out = tmp_path / "out"
    first = run_batch(manifest, out, model=MODEL, pipe=pipe, log=lambda line: None)
    assert (first.generated, first.skipped, first.failed) == (2, 0, 0)
    videos = sorted(p for p in os.listdir(out) if p.endswith(".mp4"))
    assert videos == ["00000_astronaut_text.mp4", "00001_astronaut_text.mp4"]
    stamps = {v: os.stat(out / v).st_mtime_ns for v in videos}
    done_lines = (out / "done.jsonl").read_text().splitlines()

    log = []
    again = run_batch(manifest, out, model=MODEL, pipe=pipe, log=log.append)
    assert (again.generated, again.skipped, again.failed) == (0, 2, 0)
    assert {v: os.stat(out / v).st_mtime_ns for v in videos} == stamps, "finished outputs were rewritten"
    assert (out / "done.jsonl").read_text().splitlines() == done_lines
    assert not any("->" in line for line in log) and any("skipping 2" in line for line in log), log

    rows[1]["seed"] = "3"                         # a changed row is not "finished"
    write_manifest(tmp_path, rows)
    third = run_batch(manifest, out, model=MODEL, pipe=pipe, log=lambda line: None)
    assert (third.generated, third.skipped) == (1, 1)
    assert os.stat(out / videos[0]).st_mtime_ns == stamps[videos[0]]


@needs_model
def test_accelerate_launch_two_cpu_processes_split_rows_and_a_bad_row_does_not_stop_the_batch(tmp_path):
    # `accelerate launch --cpu --num_processes 2` would start ONE process (simple launcher);
    # `--multi_gpu` starts two through torchrun, and moda batch runs them on the CPU (gloo).
    manifest = write_manifest(tmp_path, [
        {"image": "astronaut.png", "text": "One.", "size": "256", "seed": "1"},
        {"image": "wall.png", "text": "No face.", "size": "256"},
        {"image": "astronaut.png", "text": "Two.", "size": "256", "still": "1"},
    ])
    out = tmp_path / "out"
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "moda_hub.cli", "batch", str(manifest), "--out", str(out), "--model", MODEL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, "a failed row must make the batch end with a non-zero status"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 rows failed" in errors[0] and "errors.jsonl" in errors[0], log[-3000:]

    done = [json.loads(line) for line in (out / "done.jsonl").read_text().splitlines()]
    assert sorted(d["row"] for d in done) == [0, 2]
    assert {d["rank"] for d in done} == {0, 1}, f"rows were not split over two processes: {done}"
    for name in ("00000_astronaut_text.mp4", "00002_astronaut_text.mp4"):
        info = read_video_info(out / name)
        assert sorted(info["codecs"]) == ["aac", "h264"] and info["width"] == 256
    (bad,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert bad["row"] == 1 and bad["error"] == "NoFaceFoundError" and "wall.png" in bad["message"]
    assert sorted(os.listdir(out)) == ["00000_astronaut_text.mp4", "00002_astronaut_text.mp4",
                                       "done.jsonl", "errors.jsonl"]
