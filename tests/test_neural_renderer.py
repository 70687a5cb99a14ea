"""The person-specific NeuralRenderer and `moda prepare video`, on talking videos made here.

The videos: the shipped pipeline (WarpRenderer) animates the bundled portrait with the bundled
speech, written as MP4s with their audio — one of them with a second of no face in the middle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from moda_hub.errors import InvalidParameterError, WeightsError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pretrained" / "moda-base"
SECONDS = 3.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory, shipped_pipe):
    """Folder with talk_a.mp4, talk_b.mp4 (no face from 1.0 to 2.0 s), talk_c.mp4; 3 s, 30 fps, 320 px."""
    from PIL import Image

    from moda_hub.speech.audio import load_audio
    from moda_hub.video import write_mp4

    folder = tmp_path_factory.mktemp("videos")
    portrait = np.asarray(Image.open(ROOT / "examples" / "portrait.png").convert("RGB").resize((320, 320), Image.LANCZOS))
    wav = load_audio(str(ROOT / "examples" / "speech.wav"))
    for k, name in enumerate(("talk_a", "talk_b", "talk_c")):
        clip = wav[int(k * 16000 * 2.5):][:int(SECONDS * 16000)]
        out = shipped_pipe(image=portrait, audio=(16000, clip), output_type="np", output_size=0,
                           generator=torch.Generator().manual_seed(k))
        frames = out.frames.copy()
        if name == "talk_b":
            frames[30:60] = 128                                  # a second with no face at all
        write_mp4(frames, 30, clip, 16000, str(folder / f"{name}.mp4"))
    return folder


@pytest.fixture(scope="module")
def dataset(videos, tmp_path_factory):
    from moda_hub.data.video_dataset import prepare_videos

    out = tmp_path_factory.mktemp("data")
    lines = []
    manifest = prepare_videos(str(videos), str(out), crop_size=128, val_names=["talk_c"], min_span_s=0.5,
                              progress=False, log=lines.append)
    return out, manifest, lines


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A renderer trained for a few steps (64 px grid, 128 px canvas) + its personal pipeline."""
    from moda_hub.training.train_renderer import train_renderer

    data, _, _ = dataset
    run = tmp_path_factory.mktemp("run")
    train_renderer(str(data), str(run), steps=240, seed=0, image_size=64, base_channels=8,
                   channel_mult=[1, 2, 4, 4], batch_size=4, lr=2e-3, threads=1, log_every=40, val_clips=1,
                   val_frames=45, base=str(MODEL))
    with open(run / "renderer.metrics.json") as f:
        return run, json.load(f)


# ----------------------------------------------------------------------------- prepare video

def test_prepare_writes_manifest_split_and_training_arrays(dataset):
    data, manifest, _ = dataset
    assert manifest["format"] == "moda-video/1" and manifest["fps"] == 30 and manifest["sample_rate"] == 16000
    by_name = {v["name"]: v for v in manifest["videos"]}
    assert set(by_name) == {"talk_a", "talk_b", "talk_c"}
    assert by_name["talk_c"]["split"] == "val" and by_name["talk_a"]["split"] == "train"
    assert manifest["splits"]["val"]["videos"] == 1 and manifest["splits"]["train"]["videos"] == 2
    for v in manifest["videos"]:
        assert v["frames"] == 90 and v["has_audio"]
    assert [u["video"] for u in manifest["utterances"]].count("talk_b") == 2      # the two face spans
    with np.load(data / f"shard_{by_name['talk_a']['shard']:04d}.npz") as z:
        F = len(z["frame_index"])
        assert F == by_name["talk_a"]["face_frames"] >= 85
        assert z["landmarks"].shape == (F, 478, 3) and z["features"].shape == (F, 80) and z["phones"].shape == (F, 14)
        assert z["lip"].shape == (F, 40, 3) and z["head"].shape == (F, 7) and z["torso"].shape == (F, 2)
        assert np.abs(z["head"][0]).max() < 1e-5                                  # relative to the first frame
        assert z["reference_frames"].shape == (1, 320, 320, 3)
    crops = np.load(data / f"frames_{by_name['talk_a']['shard']:04d}.npy", mmap_mode="r")
    assert crops.shape == (F, 128, 128, 3) and crops.dtype == np.uint8 and crops[10].std() > 20


def test_faceless_span_is_skipped_and_reported(dataset):
    _, manifest, lines = dataset
    spans = [s for s in manifest["skipped"] if s["video"] == "talk_b"]
    assert len(spans) == 1 and spans[0]["reason"] == "no face"
    assert abs(spans[0]["start_s"] - 1.0) < 0.1 and abs(spans[0]["end_s"] - 2.0) < 0.1
    assert any("talk_b: skipped" in line and "no face" in line for line in lines)
    assert not manifest["failed"]


def test_smoothing_reaches_the_stored_landmarks(dataset):
    data, manifest, _ = dataset
    v = next(v for v in manifest["videos"] if v["name"] == "talk_a")
    with np.load(data / f"shard_{v['shard']:04d}.npz") as z:
        raw, smooth = z["landmarks_raw"], z["landmarks"]
    assert not np.allclose(raw, smooth)

    def jitter(x):                                       # frame-to-frame acceleration, px
        return float(np.abs(np.diff(x[:, :468, :2], n=2, axis=0)).mean())
    assert jitter(smooth) < 0.8 * jitter(raw)
    assert float(np.abs(raw - smooth)[:, :, :2].mean()) < 1.0     # smoothing, not a different face


def test_prepare_resumes_without_redoing_videos(dataset, videos):
    from moda_hub.data.video_dataset import prepare_videos

    data, manifest, _ = dataset
    stamps = {f: os.path.getmtime(data / f) for f in os.listdir(data) if f.startswith(("shard_", "frames_"))}
    lines = []
    again = prepare_videos(str(videos), str(data), crop_size=128, val_names=["talk_c"], min_span_s=0.5,
                           progress=False, log=lines.append)
    assert any("3 of 3 videos already done" in line for line in lines)
    assert {f: os.path.getmtime(data / f) for f in stamps} == stamps
    assert again["utterances"] == manifest["utterances"]


def test_prepared_video_trains_stage_one_readers(dataset):
    from moda_hub.training.corpus import DenseFrames, MotionCorpus

    data, manifest, _ = dataset
    train = MotionCorpus(str(data), "train")
    assert len(train.utterances) == 3 and train.feature_dim == 94
    assert all(np.isfinite(u["blink_rate"]) for u in train.utterances)
    dense = DenseFrames(str(data), "val")
    assert len(dense) == manifest["splits"]["val"]["frames"]


def test_augmented_footage_copies_retime_the_motion_to_the_new_tape_speed(dataset):
    """training.footage_augment: each copy of a prepared clip is its audio at another tape speed
    through the recording chain, encoded again, with the motion resampled to the new tempo."""
    from moda_hub.data.augment import AugmentConfig
    from moda_hub.data.augment import resample as tape
    from moda_hub.speech.speech_states import default_encoder, encoder_features
    from moda_hub.training.corpus import MotionCorpus
    from moda_hub.training.footage_augment import augmented_footage, retime

    data, _, _ = dataset
    enc = default_encoder()
    originals = {u["id"]: u for u in MotionCorpus(str(data), "train").utterances}
    copies = augmented_footage(str(data), "train", 2, enc, seed=3, speed_jitter=0.1)
    assert len(copies) == 2 * len(originals)
    for u in copies:
        o = originals[u["id"].split("@")[0]]
        assert 0.9 <= u["speed"] <= 1.1 and u["subject"] == o["subject"] and u["speaker"] == o["speaker"]
        assert u["features"].shape == (len(u["lip"]), enc.config.d_model) and np.isfinite(u["features"]).all()
        assert abs(len(u["lip"]) - len(o["lip"]) / u["speed"]) <= 2
        assert u["eye"].shape[1:] == (60, 3) and u["head"].shape[1] == 7 and u["dense"].shape[1:] == (478, 3)
    # seeded: the same copies again, other ones with another seed
    again = augmented_footage(str(data), "train", 2, enc, seed=3, speed_jitter=0.1)
    assert all(np.array_equal(a["features"], b["features"]) for a, b in zip(copies, again))
    assert [u["speed"] for u in augmented_footage(str(data), "train", 2, enc, seed=4)] != [u["speed"] for u in copies]
    # with a clean chain the copy hears exactly the re-taped clip, and frame j shows the
    # original at (j + 0.5) * speed - 0.5
    clean = AugmentConfig(p_clean=1.0, gain_db=(-6.0, -6.0), p_clip=0.0, p_quantize=0.0)
    u = augmented_footage(str(data), "train", 1, enc, seed=5, speed_jitter=0.1, config=clean)[0]
    o = originals[u["id"].split("@")[0]]
    with np.load(data / "shard_0000.npz") as z:
        wav, frames = z["audio_wav"].astype(np.float32) / 32767.0, z["frame_index"][:len(o["lip"])].astype(float)
    taped = tape(wav, 16000, 16000, u["speed"])
    heard = encoder_features(taped * (10 ** (-6 / 20) / (np.abs(taped).max() + 1e-9)), 30, enc)   # at -6 dBFS
    j0 = int(np.ceil((frames[0] + 0.5) / u["speed"] - 0.5))
    np.testing.assert_allclose(u["features"], heard[j0:j0 + len(u["features"])], atol=1e-3)
    pos = (np.arange(j0, j0 + len(u["lip"])) + 0.5) * u["speed"] - 0.5
    np.testing.assert_allclose(u["lip"], retime(o["lip"], frames, pos), atol=1e-6)
    ramp = np.arange(10.0)[:, None] * [1.0, -2.0]
    np.testing.assert_allclose(retime(ramp, np.arange(10.0), np.array([0.0, 2.25, 8.5, 9.0])),
                               [[0, 0], [2.25, -4.5], [8.5, -17.0], [9.0, -18.0]], atol=1e-6)


def test_finetuning_stages_one_and_two_from_the_shipped_weights_fits_the_prepared_video(dataset, tmp_path):
    """`moda train --stage moda|composer --init pretrained/moda-base` on prepared video: it starts from
    the shipped weights (same architecture and normalisation) and lowers their error on that video."""
    from moda_hub.cli import main
    from moda_hub.models.composer import FacialComposer
    from moda_hub.models.moda import ModaModel
    from moda_hub.training.corpus import DenseFrames, MotionCorpus
    from moda_hub.training.train_composer import validate_composer
    from moda_hub.training.train_moda import validate

    data = str(dataset[0])
    base = ModaModel.from_pretrained(str(MODEL / "moda"))
    train = MotionCorpus(data, "train", base.config.features)
    assert main(["train", "--stage", "moda", "--data", data, "--out", str(tmp_path / "moda"),
                 "--init", str(MODEL), "--steps", "60"]) == 0
    tuned = ModaModel.from_pretrained(str(tmp_path / "moda"))
    assert tuned.config.lip_input == base.config.lip_input and tuned.config.audio_dim == base.config.audio_dim
    assert torch.equal(tuned.lip_mean, base.lip_mean)             # the shipped normalisation is kept,
    eye = np.concatenate([u["eye"].reshape(len(u["eye"]), -1) for u in train.utterances])
    z = (torch.from_numpy(eye) - tuned.eye_mean) / tuned.eye_std   # widened only where this video moves
    assert float((z ** 2).mean(0).max()) < 10.0                     # channels the synthetic rig kept still
    assert torch.all(tuned.eye_std >= base.eye_std)
    before, after = validate(base, train)["val_lip_l2"], validate(tuned, train)["val_lip_l2"]
    assert after < 0.9 * before, (before, after)

    frames = DenseFrames(data, "train")
    assert main(["train", "--stage", "composer", "--data", data, "--out", str(tmp_path / "composer"),
                 "--init", str(MODEL), "--steps", "60"]) == 0
    comp_before = validate_composer(FacialComposer.from_pretrained(str(MODEL / "composer")).eval(), frames)
    comp_after = validate_composer(FacialComposer.from_pretrained(str(tmp_path / "composer")).eval(), frames)
    assert comp_after < comp_before, (comp_before, comp_after)


def test_bad_inputs_give_clear_errors(tmp_path):
    from moda_hub.data.video_dataset import load_manifest, list_videos

    with pytest.raises(InvalidParameterError, match="neither a video file nor a folder"):
        list_videos(str(tmp_path / "missing"))
    with pytest.raises(InvalidParameterError, match="no video files"):
        list_videos(str(tmp_path))
    with pytest.raises(InvalidParameterError, match="moda prepare video"):
        load_manifest(str(tmp_path))


# ----------------------------------------------------------------------------- renderer

def test_sketch_channels_follow_the_mouth():
    from moda_hub.face.template import canonical_template
    from moda_hub.face import topology as topo
    from moda_hub.render.sketch import NUM_CHANNELS, draw_sketch

    face = canonical_template() * 40 + np.float32([64, 64, 0])
    opened = face.copy()
    opened[topo.LIPS_INNER[np.isin(topo.LIPS_INNER, [14, 87, 178, 88, 95, 317, 402, 318, 324])], 1] += 8
    closed_sk, open_sk = draw_sketch(face, 128), draw_sketch(opened, 128)
    assert closed_sk.shape == (NUM_CHANNELS, 128, 128) and closed_sk.max() <= 1.0
    assert open_sk[3].sum() > closed_sk[3].sum() + 50        # the mouth-opening channel fills
    assert np.allclose(open_sk[1], closed_sk[1])             # the eyes did not move


def test_untrained_renderer_renders_the_warp_and_keeps_state_across_chunks(dataset):
    from moda_hub.models.neural_renderer import NeuralRenderer
    from moda_hub.training.train_renderer import VideoFrames

    data, _, _ = dataset
    clip = VideoFrames(str(data), "val").clips[0]
    torch.manual_seed(0)
    r = NeuralRenderer(image_size=64, canvas_size=128, base_channels=8, channel_mult=[1, 2, 4, 4]).eval()
    lm = clip["landmarks_px"][:12]
    p = r.prepare(clip["portrait"], lm[0], output_size=128)
    frames = r.render(p, lm)
    warp = r.warp_renderer.render(r.warp_renderer.prepare(clip["portrait"], lm[0]), lm)
    assert np.abs(frames.astype(int) - warp).max() <= 1               # zero correction = the warp
    with torch.no_grad():                                              # a renderer that uses its inputs
        for prm in r.out.parameters():
            prm.normal_(0, 0.05)
    whole = r.render(r.prepare(clip["portrait"], lm[0], output_size=128), lm)
    p = r.prepare(clip["portrait"], lm[0], output_size=128)
    parts = np.concatenate([r.render(p, lm[:5]), r.render(p, lm[5:])])
    assert np.array_equal(whole, parts) and p.frames_rendered == 12
    full = r.render(r.prepare(clip["portrait"], lm[0], output_size=0), lm[:2])
    assert full.shape == (2,) + clip["portrait"].shape
    with pytest.raises(InvalidParameterError, match="landmarks_px"):
        r.render(p, lm[:, :100])


def test_training_beats_the_untrained_renderer_on_held_out_frames(trained):
    run, metrics = trained
    assert metrics["steps"] == 240
    assert metrics["val_psnr"] > metrics["untrained_val_psnr"] + 0.05, metrics
    assert metrics["val_ssim"] >= metrics["untrained_val_ssim"] - 0.002, metrics
    log = open(run / "renderer.log").read()
    assert "untrained val_psnr" in log and "step 240" in log and "final" in log
    assert sorted(os.listdir(run / "renderer")) == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_personal_pipeline_swaps_renderer_saves_and_streams_like_call(trained, tmp_path):
    from moda_hub import ModaPipeline
    from moda_hub.models.neural_renderer import NeuralRenderer

    run, metrics = trained
    personal = ModaPipeline.from_pretrained(str(run / "pipeline"))
    assert isinstance(personal.renderer, NeuralRenderer)
    assert "NeuralRenderer" in personal.model_card and f"{metrics['val_psnr']:.2f}" in personal.model_card
    renderer = NeuralRenderer.from_pretrained(str(run / "renderer"))
    swapped = ModaPipeline.from_pretrained(str(MODEL), renderer=renderer)
    swapped.save_pretrained(str(tmp_path / "again"))
    again = ModaPipeline.from_pretrained(str(tmp_path / "again"))
    a, b = again.renderer.state_dict(), personal.renderer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    personal.set_progress_bar_config(disable=True)
    image = ROOT / "examples" / "portrait.png"
    kw = dict(image=str(image), text="Hi there.", output_size=256)
    out = personal(**kw, output_type="np", generator=torch.Generator().manual_seed(1))
    chunks = list(personal.stream(**kw, chunk_frames=7, generator=torch.Generator().manual_seed(1)))
    streamed = np.concatenate([c.frames for c in chunks])
    assert out.frames.shape[1:] == (256, 256, 3) and np.array_equal(streamed, out.frames)


def test_broken_renderer_weights_raise_weights_error(trained, tmp_path):
    import shutil

    from moda_hub.models.neural_renderer import NeuralRenderer

    run, _ = trained
    bad = tmp_path / "renderer"
    shutil.copytree(run / "renderer", bad)
    with open(bad / "diffusion_pytorch_model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(WeightsError, match="corrupted or truncated"):
        NeuralRenderer.from_pretrained(str(bad))
    os.remove(bad / "diffusion_pytorch_model.safetensors")
    with pytest.raises(WeightsError, match="missing"):
        NeuralRenderer.from_pretrained(str(bad))
    with pytest.raises(WeightsError, match="no NeuralRenderer folder"):
        NeuralRenderer.from_pretrained(str(tmp_path / "nothing"))


def test_cli_prepare_video_and_train_renderer_arguments(videos, tmp_path):
    from moda_hub.cli import build_parser, main

    out = tmp_path / "cli_data"
    assert main(["prepare", "video", "--in", str(videos), "--out", str(out), "--crop-size", "128",
                 "--val-count", "1", "--min-span", "0.5"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["val"]["videos"] == 1 and manifest["crop_size"] == 128
    args = build_parser().parse_args(["train", "--stage", "renderer", "--data", str(out), "--out", "runs/me",
                                      "--minutes", "30", "--image-size", "128", "--threads", "1"])
    assert args.stage == "renderer" and args.image_size == 128 and args.base.endswith("moda-base")
    args = build_parser().parse_args(["train", "--stage", "moda", "--data", str(out), "--out", "runs/m",
                                      "--init", "pretrained/moda-base", "--steps", "10"])
    assert args.init == "pretrained/moda-base"
    torch.set_num_threads(2)
    assert main(["train", "--stage", "moda", "--data", str(out), "--out", str(tmp_path / "m"), "--steps", "2",
                 "--lip-input", "phones", "--threads", "1"]) == 0   # from scratch, the shipped recipe's option
    assert torch.get_num_threads() == 1
    assert main(["train", "--stage", "composer", "--data", str(out), "--out", str(tmp_path / "c"), "--steps", "2",
                 "--threads", "0"]) == 2
    from moda_hub.models.moda import ModaModel
    assert ModaModel.from_pretrained(str(tmp_path / "m")).config.lip_input == "phones"
    assert main(["train", "--stage", "moda", "--data", str(out), "--out", str(tmp_path / "m2"), "--steps", "2",
                 "--init", str(MODEL), "--lip-input", "phones"]) == 2   # a fine-tune keeps its model's input
    assert main(["prepare", "video", "--in", str(tmp_path / "nothing"), "--out", str(out)]) == 2
