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


# ---------------------------------------------------------------------------------- careless manifests (issue 21)
def _cli_lines(argv, capsys):
    from moda_hub.cli import main
    code = main(argv)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_utf16_tab_separated_manifest_is_read(tmp_path):
    """What a spreadsheet's "Unicode Text" export writes: UTF-16 with a BOM, tab-separated."""
    PIL.Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    (tmp_path / "jobs.txt").write_bytes("image\ttext\tseed\nastronaut.png\tHéllo wörld.\t3\n".encode("utf-16"))
    (row,) = read_manifest(tmp_path / "jobs.txt")
    assert row.problem is None and row.text == "Héllo wörld." and row.seed == 3
    assert row.image == str(tmp_path / "astronaut.png")


def test_a_manifest_that_is_not_text_is_one_line_naming_the_line(tmp_path, capsys):
    (tmp_path / "jobs.csv").write_bytes(b"image,text\na.png,hello\n\xff\xfe\x00garbage\x81\n")
    code, lines = _cli_lines(["batch", str(tmp_path / "jobs.csv"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "is not utf-8 text (line 3" in lines[0] and "save it as 'CSV UTF-8'" in lines[0]


def test_a_cell_over_the_csv_field_limit_fails_its_row_naming_row_and_column(tmp_path):
    path = write_manifest(tmp_path, [{"image": "astronaut.png", "text": "Hi."},
                                     {"image": "astronaut.png", "text": "x" * 131_073}])
    good, bad = read_manifest(path)                      # csv's own limit is 131 072: no _csv.Error
    assert good.problem is None
    assert bad.problem.startswith("column text: the cell is 131073 characters long, more than 100000")


def test_a_null_byte_fails_its_row_naming_the_column(tmp_path):
    (tmp_path / "jobs.csv").write_bytes(b"image,text\na.png,hel\x00lo\n")
    (row,) = read_manifest(tmp_path / "jobs.csv")
    assert row.problem == "column text: the cell holds a NUL character — remove it (the file may be binary, not CSV)"


@pytest.mark.parametrize("where,pattern", [("file", r"is a file, not a folder"),
                                           ("under-a-file", r"is a file, not a folder"),
                                           ("read-only", r"is read-only")])
def test_batch_out_that_cannot_be_a_folder_is_one_line_before_any_work(where, pattern, tmp_path, capsys):
    manifest = write_manifest(tmp_path, [{"image": "astronaut.png", "text": "Hi."}])
    (tmp_path / "taken").write_text("not a folder")
    (tmp_path / "locked").mkdir(mode=0o555)
    out = {"file": tmp_path / "taken", "under-a-file": tmp_path / "taken" / "out",
           "read-only": tmp_path / "locked" / "out"}[where]
    try:
        code, lines = _cli_lines(["batch", str(manifest), "--out", str(out), "--model", str(tmp_path / "not-loaded")],
                                 capsys)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    import re
    assert re.search(pattern, lines[0]), lines
    assert (tmp_path / "taken").read_text() == "not a folder" and not (tmp_path / "locked" / "out").exists()


@needs_model
def test_ctrl_c_during_a_batch_is_one_line_and_the_same_command_resumes(tmp_path):
    """A terminal's Ctrl-C goes to the whole foreground process group: the espeak-ng and phone helper
    processes must not print their own KeyboardInterrupt tracebacks; the batch resumes. (A stage 1
    that hears the audio encoder, as moda-base does, runs no phone helper: only espeak-ng's.)"""
    from ctrl_c import helper_count, interrupt_when_helpers_run

    helpers = helper_count(MODEL)

    # several seconds of speech: on an idle machine a one-line row can finish before the interrupt lands
    text = ("One, a little longer. This row keeps the portrait talking for several seconds, so that the "
            "interrupt arrives while its video is being written.")
    manifest = write_manifest(tmp_path, [{"image": "astronaut.png", "text": text, "size": "256"}])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "moda_hub.cli", "batch", str(manifest), "--out", str(out), "--model", MODEL]
    code, stderr = interrupt_when_helpers_run(cmd, ROOT, writing_into=str(out), helpers=helpers)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 130 and lines == ["error: interrupted — run the same command again to resume (finished rows "
                                     "are skipped)"], stderr[-3000:]
    assert not [p for p in os.listdir(out) if p.startswith(".moda")], "a temporary file was left behind"
    finished = [json.loads(line)["output"] for line in (out / "done.jsonl").read_text().splitlines()] \
        if (out / "done.jsonl").exists() else []
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert ("skipping" in resumed.stdout) == bool(finished)
    assert sorted(p for p in os.listdir(out) if p.endswith(".mp4")) == ["00000_astronaut_text.mp4"]
