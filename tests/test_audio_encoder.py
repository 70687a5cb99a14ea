"""The ``audio_encoder`` component (Whisper tiny's encoder): save / from_pretrained round trip
(safetensors only, checked like every component), windowed encoding without seams, streaming
rows equal to the whole clip. Uses the converted weights in pretrained/moda-base/audio_encoder."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from moda_hub.speech import speech_states
from moda_hub.errors import WeightsError
from moda_hub.models.audio_encoder import WhisperTinyEncoder
from moda_hub.weights import load_component

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "pretrained", "moda-base")
ENCODER = os.path.join(MODEL, "audio_encoder")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(ENCODER, "config.json")),
                                reason="no audio_encoder — convert it with scripts/convert_whisper_encoder.py")

# ~15 s of espeak-ng speech: longer than one encoder window (10 s), so it has window borders inside
LONG_TEXT = ("The harbour was quiet in the early morning, and the boats rocked slowly on the grey water. "
             "A man with a blue coat walked along the wall, counting the ropes and the nets. "
             "Later the sun came out, the market opened, and everybody talked about the weather again.")


@pytest.fixture(scope="module")
def encoder():
    return load_component(WhisperTinyEncoder, WhisperTinyEncoder.from_pretrained, ENCODER).float().eval()


@pytest.fixture(scope="module")
def speech():
    from moda_hub.speech.audio import synthesize_speech
    return synthesize_speech(LONG_TEXT)


def test_component_round_trips_through_save_and_from_pretrained_safetensors_only(encoder, speech, tmp_path):
    from moda_hub import ModaPipeline

    base = ModaPipeline.from_pretrained(MODEL)
    pipe = ModaPipeline(moda=base.moda, composer=base.composer, renderer=base.renderer, audio_encoder=encoder)
    pipe.save_pretrained(tmp_path / "pipe")
    files = sorted(os.listdir(tmp_path / "pipe" / "audio_encoder"))
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"], files
    again = ModaPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(again.audio_encoder, WhisperTinyEncoder)
    mel = encoder.log_mel(speech[:16000 * 4])
    np.testing.assert_array_equal(again.audio_encoder.encode(mel).numpy(), encoder.encode(mel).numpy())
    # dtype through from_pretrained, like the other components
    half = ModaPipeline.from_pretrained(tmp_path / "pipe", torch_dtype=torch.float16)
    assert next(half.audio_encoder.parameters()).dtype == torch.float16
    # a pickle beside (or instead of) the safetensors is never loaded: a clear error, no random weights
    os.remove(tmp_path / "pipe" / "audio_encoder" / "diffusion_pytorch_model.safetensors")
    torch.save(encoder.state_dict(), tmp_path / "pipe" / "audio_encoder" / "diffusion_pytorch_model.bin")
    with pytest.raises(WeightsError, match="audio_encoder.*pickle"):
        ModaPipeline.from_pretrained(tmp_path / "pipe")


def test_a_truncated_encoder_file_is_refused_naming_it(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "enc")
    path = tmp_path / "enc" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_component(WhisperTinyEncoder, WhisperTinyEncoder.from_pretrained, tmp_path / "enc")


def test_streamed_rows_equal_the_whole_clip_in_any_order(encoder, speech):
    whole = speech_states.encoder_features(speech, 30, encoder)
    assert whole.shape == (int(round(len(speech) / 16000 * 30)), 384)
    table = speech_states.EncoderStates(speech, 30, encoder)
    assert len(table.windows) >= 2
    for stop in (1, 7, 200, 201, 350, len(table)):
        rows = table.upto(stop)
        np.testing.assert_array_equal(rows[:stop], whole[:stop])   # rows handed out are final
    # states follow the speech: louder frames (words) differ from the pauses between sentences
    assert np.isfinite(whole).all() and whole.std(0).mean() > 0.1


def _border_frames(n_states: int, fps: float = 30.0):
    """Model frames where encoder windowing changes what is blended: every window's first and
    last state and the ends of its cross-fade, inside the clip."""
    overlap = int(round(speech_states.OVERLAP_SECONDS * speech_states.STATE_RATE))
    out = set()
    for a, b in speech_states.state_windows(n_states):
        for s in (a, a + overlap, b - overlap, b):
            if 0 < s < n_states:
                out.add(int(round(s / speech_states.STATE_RATE * fps)))
    return sorted(out)


def _spikes(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T - 1,) how far the frame-to-frame step of (features - reference) into frame t stands above
    the larger of its two neighbours (mean over the 384 dims). A seam is a step into ONE frame."""
    steps = np.abs(np.diff(features - reference, axis=0)).mean(1)
    padded = np.concatenate([[0.0], steps, [0.0]])
    return np.maximum(steps - np.maximum(padded[:-2], padded[2:]), 0.0)


def test_no_seams_at_encoder_window_borders(encoder, speech, monkeypatch):
    windowed = speech_states.encoder_features(speech, 30, encoder)
    n_states = (len(speech) // 160 + 1) // 2
    borders = _border_frames(n_states)
    assert len(borders) >= 3, borders
    with monkeypatch.context() as m:                    # the same clip in ONE window: no borders
        m.setattr(speech_states, "WINDOW_SECONDS", 30.0)
        single = speech_states.encoder_features(speech, 30, encoder)
    bound = 0.25 * float(np.median(np.abs(np.diff(windowed, axis=0)).mean(1)))
    spikes = _spikes(windowed, single)
    at = {b: round(float(spikes[b - 1]), 4) for b in borders}
    assert max(at.values()) <= bound, f"encoder window borders add steps beyond {bound:.4f}: {at}"


def test_state_layer_gives_that_layers_states_and_the_pipeline_refuses_another(encoder, speech):
    """``state_layer`` k: the residual stream after k transformer layers, normalised per frame (the
    later layers are not run); stage 1 records the layer it was trained on and a pipeline whose
    encoder gives another is refused, not run on states it never heard."""
    from moda_hub import ModaPipeline

    def with_layer(k):
        cfg = {key: v for key, v in encoder.config.items() if not key.startswith("_")}
        other = WhisperTinyEncoder(**dict(cfg, state_layer=k)).eval()
        other.load_state_dict(encoder.state_dict())
        return other

    full = with_layer(None)
    seen = []
    hook = full.encoder.layers[1].register_forward_hook(lambda mod, inp, out: seen.append(out))
    mel = encoder.log_mel(speech[:16000 * 3])
    last = full.encode(mel)
    hook.remove()
    two = with_layer(2)
    assert two.states_layer() == 2 and full.states_layer() == encoder.config.encoder_layers
    np.testing.assert_allclose(two.encode(mel).numpy(), torch.nn.functional.layer_norm(seen[0][0], (384,)).numpy(),
                               atol=1e-5)
    assert two.encode(mel).shape == last.shape and not torch.allclose(two.encode(mel), last, atol=0.1)
    with pytest.raises(ValueError, match="state_layer"):
        WhisperTinyEncoder(state_layer=encoder.config.encoder_layers + 1)
    base = ModaPipeline.from_pretrained(MODEL)
    trained = base.moda.config.audio_state_layer or encoder.config.encoder_layers
    wrong = with_layer(1 if trained != 1 else 3)
    with pytest.raises(WeightsError, match=f"layer-{trained} states.*state_layer to {trained}"):
        ModaPipeline(moda=base.moda, composer=base.composer, renderer=base.renderer, audio_encoder=wrong)
    ModaPipeline(moda=base.moda, composer=base.composer, renderer=base.renderer, audio_encoder=with_layer(trained))
