"""The Space under load: 20 users at once against a local app.py on 127.0.0.1.

The server runs with a small concurrency and queue (``MODA_CONCURRENCY``, ``MODA_MAX_QUEUE``)
so that a burst of 20 ``/animate`` jobs (about 2 s of speech, 256 px) overflows the queue.
Every job must either finish with a playable MP4 or be refused with gradio's clear
"Queue is full" message — no other error, no hang (each job and the whole burst have time
limits) — and the server must answer normally afterwards. Uploads over ``MODA_MAX_UPLOAD_MB``
are refused with a message, by the client before sending and by the server when sent anyway.

Memory under long audio is the benchmark's subject (benchmarks/), not this file's.
"""
from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from test_app import MODEL, PORTRAIT, make_speech_clip, running_app, video_path

N_JOBS = 20
CONCURRENCY = 2          # MODA_CONCURRENCY: videos generated at once
MAX_QUEUE = 6            # MODA_MAX_QUEUE: jobs allowed to wait; a burst of 20 overflows it
MAX_UPLOAD_MB = 1        # MODA_MAX_UPLOAD_MB
JOB_SECONDS = 240        # one job, from submit to result, at most
BURST_SECONDS = 480      # the whole burst at most

pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(),
                                reason="no trained pipeline at pretrained/moda-base — run `make train`")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("load")
    with running_app(workdir, MODA_CONCURRENCY=CONCURRENCY, MODA_MAX_QUEUE=MAX_QUEUE,
                     MODA_MAX_UPLOAD_MB=MAX_UPLOAD_MB, MODA_MAX_AUDIO_SECONDS=10) as url:
        yield url


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_speech_clip(tmp_path_factory.mktemp("load_speech") / "hello.wav")


def _one_job(url: str, clip, seed: int) -> dict:
    """One user: connect, upload, animate. Returns what happened, never raises."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    start = time.perf_counter()
    record = {"seed": seed}
    try:
        client = Client(url, verbose=False)
        job = client.submit(portrait=handle_file(str(PORTRAIT)), audio=handle_file(str(clip)), seed=seed,
                            fps=25, output_size=256, api_name="/animate")
        record.update(outcome="done", video=video_path(job.result(timeout=JOB_SECONDS)))
    except QueueError as err:
        record.update(outcome="queue-full", message=str(err))
    except Exception as err:  # noqa: BLE001 - anything else is a failure the test reports
        record.update(outcome="error", message=f"{type(err).__name__}: {err}")
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def test_twenty_concurrent_jobs_finish_or_are_told_the_queue_is_full(server, clip):
    from moda_hub.video import read_video_info

    start = time.perf_counter()
    with ThreadPoolExecutor(N_JOBS) as pool:
        futures = [pool.submit(_one_job, server, clip, seed) for seed in range(N_JOBS)]
        finished, pending = wait(futures, timeout=BURST_SECONDS)
        assert not pending, f"{len(pending)} of {N_JOBS} jobs still running after {BURST_SECONDS} s"
    records = [f.result() for f in futures]
    elapsed = time.perf_counter() - start
    done = [r for r in records if r["outcome"] == "done"]
    full = [r for r in records if r["outcome"] == "queue-full"]
    errors = [r for r in records if r["outcome"] == "error"]
    print(f"\nload: {N_JOBS} jobs, concurrency {CONCURRENCY}, queue {MAX_QUEUE}: {len(done)} done, "
          f"{len(full)} refused (queue full), {len(errors)} errors in {elapsed:.0f} s; "
          f"job seconds {sorted(r['seconds'] for r in done)}")
    assert errors == [], errors
    assert len(done) + len(full) == N_JOBS
    assert len(done) >= CONCURRENCY, "the server finished almost nothing"
    assert len(full) >= 1, "the burst never filled the queue: the queue limit is not applied"
    for r in full:
        assert "queue is full" in r["message"].lower(), r
    for r in done:
        info = read_video_info(r["video"])
        assert info["codecs"] == ["h264", "aac"] and (info["width"], info["height"]) == (256, 256), r


def test_server_answers_normally_after_the_burst(server, clip):
    with urllib.request.urlopen(server, timeout=10) as page:
        assert page.status == 200 and b"moda-hub" in page.read()
    record = _one_job(server, clip, seed=99)
    assert record["outcome"] == "done", record


def test_uploads_over_the_limit_are_refused_with_a_message(server, tmp_path):
    import httpx
    from gradio_client import Client, handle_file

    too_big = tmp_path / "huge.wav"
    too_big.write_bytes(b"\0" * int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024))
    client = Client(server, verbose=False)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):        # the client checks first
        client.predict(portrait=handle_file(str(PORTRAIT)), audio=handle_file(str(too_big)), api_name="/animate")
    with open(too_big, "rb") as f:                                                # the server refuses too
        response = httpx.post(server + "gradio_api/upload", files={"files": ("huge.wav", f, "audio/wav")},
                              timeout=60)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    with urllib.request.urlopen(server, timeout=10) as page:                      # and keeps serving
        assert page.status == 200
