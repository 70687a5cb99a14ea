"""Stage 1 — MODA's dual-attention motion generator (DualAttn).

Audio features and a subject condition go in; per-frame facial motion comes out, in one
forward pass:

- **SpecAttn** (one-to-one, lips): a transformer decoder whose cross-attention lets frame
  ``t`` see only audio frame ``t`` (a diagonal memory mask, ``spec_band=0``) and whose
  self-attention is causal with an ALiBi-style distance bias. It never sees the latent, so
  the lips are the same for every seed.
- **ProbAttn** (one-to-many, eyes/brows/irises, head pose, torso): the same decoder shape,
  but its queries carry a per-frame Gaussian latent ``z_t`` and its cross-attention sees a
  band of audio (``prob_band`` frames each side), so blinks and head motion can follow
  pauses and emphasis. At inference ``z ~ N(0, temperature^2)`` drawn through the caller's
  ``generator``; in training ``z`` comes from a posterior encoder over the targets and the
  loss holds a real KL term against ``N(0, I)`` (the original MODA code has none).

Latents live on a coarse grid (one every ``latent_stride`` frames) and are linearly
interpolated to frames, so that independent samples give smooth motion.

Any length is handled by overlapping windows (``window`` frames, ``hop`` apart) blended
with raised-cosine cross-fades; the latent sequence is drawn once for the whole clip, so windows
agree where they overlap.

Units (see ``moda_hub.face``): ``lip`` (T, 40, 3) and ``eye`` (T, 60, 3) are offsets from
the subject's canonical mesh in canonical units (outer-eye-corner distance = 1); ``head``
(T, 7) = [d_pitch, d_yaw, d_roll (degrees), d_tx, d_ty, d_tz (canonical units),
d_log_scale]; ``torso`` (T, 2) = upper-body shift in canonical units. Targets are
normalised inside the model by per-channel statistics stored as buffers (saved with the
weights).
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..face.topology import EYES, LIPS
from ..options import OPTIONS
from ..speech.audio import _hz_to_mel, _mel_to_hz
from ..speech.kinds import PHONE_COLUMNS

LIP_INPUTS = ("all", "phones", "phones+energy", "phones+bands")
#: ProbAttn's extra condition is the blink rate (blinks per minute) divided by this.
BLINK_RATE_SCALE = 20.0


def blink_condition(blink_rate):
    """The extra per-clip condition of a blink rate (blinks per minute): ``blink_rate / 20``
    (same type as ``blink_rate``); training and inference both use it."""
    return blink_rate / BLINK_RATE_SCALE


#: "phones+bands": band edges (Hz) of the coarse loudness bands the lips hear besides the phones;
#: the lowest two follow the first formant (jaw opening), the others the spectral tilt.
LIP_BAND_EDGES_HZ = (20.0, 300.0, 800.0, 1500.0, 3000.0, 8000.0)


def band_matrix(n_mels: int, edges_hz=LIP_BAND_EDGES_HZ, fmin: float = 20.0, fmax: float = 8000.0) -> torch.Tensor:
    """(n_mels, len(edges_hz) - 1) averaging matrix: column b is the mean of the log-mel bins
    (``moda_hub.speech.audio.audio_features`` layout: Slaney mel, ``fmin``..``fmax`` Hz) whose centre
    frequency lies in ``[edges_hz[b], edges_hz[b + 1])``."""
    centres = _mel_to_hz(np.linspace(float(_hz_to_mel(fmin)), float(_hz_to_mel(fmax)), n_mels + 2))[1:-1]
    m = np.zeros((n_mels, len(edges_hz) - 1), np.float32)
    for b, (lo, hi) in enumerate(zip(edges_hz[:-1], edges_hz[1:])):
        sel = (centres >= lo) & (centres < hi)
        m[sel, b] = 1.0 / max(int(sel.sum()), 1)
    return torch.tensor(m)


def _alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric ALiBi slopes, (H,)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)])


def causal_alibi_bias(length: int, slopes: torch.Tensor) -> torch.Tensor:
    """Additive self-attention bias (H, T, T): -slope * (i - j) for j <= i, -inf for j > i."""
    i = torch.arange(length)
    dist = (i[:, None] - i[None, :]).float()
    bias = -slopes[:, None, None] * dist.clamp(min=0)
    return bias.masked_fill(dist[None] < 0, float("-inf"))


def band_mask(length: int, band: int) -> torch.Tensor:
    """Additive cross-attention mask (T, T): 0 where |i - j| <= band, -inf elsewhere.

    ``band=0`` is the diagonal one-to-one mask of SpecAttn.
    """
    i = torch.arange(length)
    allowed = (i[:, None] - i[None, :]).abs() <= band
    return torch.zeros(length, length).masked_fill(~allowed, float("-inf"))


class Attention(nn.Module):
    """Multi-head attention with an additive mask; (B, T, C) in, (B, T, C) out."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``mask=None`` means the diagonal one-to-one mask (query t sees only memory t): the
        softmax over a single key is 1, so the result is exactly the value of memory t —
        computed directly instead of through a (T, T) attention map."""
        B, T, C = x.shape
        if mask is None:
            return self.out(self.kv(memory)[..., C:])
        S = memory.shape[1]
        h = self.n_heads
        q = self.q(x).view(B, T, h, C // h).transpose(1, 2)                    # (B, H, T, c)
        k, v = self.kv(memory).view(B, S, 2, h, C // h).permute(2, 0, 3, 1, 4)  # (B, H, S, c)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal ALiBi self-attention, masked cross-attention, MLP."""

    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, n_heads)
        self.cross_attn = Attention(dim, n_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ff_mult * dim, dim))

    def forward(self, x, memory, self_bias, cross_mask):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, self_bias)
        x = x + self.cross_attn(self.norm2(x), memory, cross_mask)
        return x + self.mlp(self.norm3(x))


class DualAttnDecoder(nn.Module):
    """A stack of decoder layers sharing one self-attention bias and one cross mask."""

    def __init__(self, dim, n_heads, n_layers, ff_mult, dropout, band):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, n_heads, ff_mult, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.band = band
        self.register_buffer("slopes", _alibi_slopes(n_heads), persistent=False)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        T = queries.shape[1]
        self_bias = causal_alibi_bias(T, self.slopes).to(queries.device)
        cross_mask = band_mask(T, self.band).to(queries.device) if self.band > 0 else None
        x = queries
        for layer in self.layers:
            x = layer(x, memory, self_bias, cross_mask)
        return self.norm(x)


class AudioEncoder(nn.Module):
    """Dilated 1-D convolutions over audio features: (B, T, F) -> (B, T, C).

    Non-causal, receptive field about +-0.5 s at 30 fps, because lips move ahead of sound.
    """

    def __init__(self, in_dim: int, dim: int, dropout: float):
        super().__init__()
        self.proj = nn.Conv1d(in_dim, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim, dim, 5, padding=2 * d, dilation=d), nn.GroupNorm(1, dim),
                          nn.GELU(), nn.Dropout(dropout))
            for d in (1, 2, 4))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.proj(feats.transpose(1, 2))
        for block in self.blocks:
            x = x + block(x)
        return x.transpose(1, 2)


class PosteriorEncoder(nn.Module):
    """q(z | targets, audio): (B, T, D_target), (B, T, C) -> mu, logvar (B, T // stride + 1, Z)."""

    def __init__(self, target_dim: int, dim: int, latent_dim: int, stride: int):
        super().__init__()
        self.stride = stride
        self.net = nn.Sequential(nn.Conv1d(target_dim + dim, dim, 5, padding=2), nn.GELU(),
                                 nn.Conv1d(dim, dim, 5, padding=2), nn.GELU())
        self.head = nn.Conv1d(dim, 2 * latent_dim, 1)

    def forward(self, targets: torch.Tensor, audio: torch.Tensor, n_latent: int):
        x = self.net(torch.cat([targets, audio], -1).transpose(1, 2))       # (B, C, T)
        x = F.adaptive_avg_pool1d(x, n_latent)                               # (B, C, L)
        mu, logvar = self.head(x).transpose(1, 2).chunk(2, dim=-1)
        return mu, logvar.clamp(-8.0, 4.0)


def latent_length(num_frames: int, stride: int) -> int:
    """Number of latent steps covering ``num_frames`` frames at ``stride`` frames a step."""
    return num_frames // stride + 2


def upsample_latent(z: torch.Tensor, num_frames: int, stride: int, start: int = 0) -> torch.Tensor:
    """Linear interpolation of latents (B, L, Z) on the grid t = k * stride to frames
    ``start .. start + num_frames - 1``; returns (B, num_frames, Z)."""
    t = (torch.arange(num_frames, device=z.device, dtype=z.dtype) + start) / stride
    k0 = t.floor().long().clamp(max=z.shape[1] - 2)
    w = (t - k0.to(t.dtype)).unsqueeze(-1)
    return z[:, k0] * (1 - w) + z[:, k0 + 1] * w


class ModaModel(ModelMixin, ConfigMixin):
    """MODA stage 1: audio features + subject condition -> lip, eye, head and torso motion.

    Args:
        features (str, default "logmel+phones"): the input features the model was trained on
            (``moda_hub.speech.features.speech_features`` kind).
        audio_dim (int, default 93): feature columns per frame.
        cond_dim (int, default 1434): the subject's canonical mesh, flattened (478 * 3).
        dim (int, default 128): transformer width.
        n_heads (int, default 4), n_layers (int, default 2): per decoder.
        ff_mult (int, default 2): MLP expansion.
        latent_dim (int, default 8): ProbAttn latent size; latent_stride (int, default 5)
            frames per latent step.
        prob_band (int, default 15): frames each side ProbAttn's cross-attention sees.
        extra_cond_dim (int, default 1): extra per-clip controls fed to ProbAttn (the blink
            rate in blinks per minute / 20).
        window (int, default 300), hop (int, default 240): inference windows in frames.
        fps (int, default 30): the frame rate the model was trained at.
        dropout (float, default 0.1).
        latent_scale (float, default 1.0): prior samples are N(0, (temperature * latent_scale)^2);
            set after training by ``moda_hub.training.train_moda.calibrate_latent_scale`` so that
            sampled head motion has the spread of the training motion at temperature 1.
        lip_amplitude (float, default 1.0): how far the generated mouth opens, measured from the
            portrait's lips brought together, relative to the amplitude it was trained to (every
            training speaker scaled to one amplitude); applied by the pipeline
            (``moda_hub.motion.controls.apply_controls``), set after training on the validation
            speakers (``scripts/build_moda_base.py --lip-amplitude``).
        audio_state_layer (int or None, default None): for the encoder kinds, which hidden state of
            the ``audio_encoder`` stage 1 was trained on (its ``state_layer``; None: the last). The
            pipeline refuses an encoder that gives another one.
        lip_input (str, default "all"): what SpecAttn (the lips) hears. "all": the shared audio
            encoder over every feature column (ProbAttn hears the same). "phones": a separate
            audio encoder over only the last ``phone_dim`` columns (the pocketsphinx phone
            stream of ``"logmel+phones"`` / ``"logmel+phones+opening"``), which does not depend
            on the voice's timbre.
            "phones+energy": the same plus one loudness column (the mean of the log-mel
            columns per frame). "phones+bands": the same plus the mean log-mel of each band of
            :data:`LIP_BAND_EDGES_HZ` (coarse spectral shape: first formant and tilt, not the
            voice's fine timbre). ProbAttn always hears every column.
        phone_dim (int, default 13): width of the phone stream at the end of the features
            (``moda_hub.speech.features.PHONE_COLUMNS[features]``: 13, or 14 with the opening column).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, features: str = "logmel+phones", audio_dim: int = 93, cond_dim: int = 1434, dim: int = 128, n_heads: int = 4,
                 n_layers: int = 2, ff_mult: int = 2, latent_dim: int = 8, latent_stride: int = 5,
                 prob_band: int = 15, extra_cond_dim: int = 1, torso_dim: int = 2,
                 window: int = 300, hop: int = 240, fps: int = 30, dropout: float = 0.1,
                 latent_scale: float = 1.0, lip_input: str = "all", phone_dim: int = 13,
                 lip_amplitude: float = 1.0, audio_state_layer: Optional[int] = None):
        super().__init__()
        if lip_input not in LIP_INPUTS:
            raise ValueError(f"lip_input={lip_input!r} — use one of {LIP_INPUTS}")
        if lip_input != "all" and not 0 < phone_dim < audio_dim + (lip_input == "phones"):
            raise ValueError(f"lip_input={lip_input!r} needs a phone stream: phone_dim={phone_dim} "
                             f"columns at the end of audio_dim={audio_dim} features")
        if lip_input != "all" and PHONE_COLUMNS.get(features) not in (None, 0, phone_dim):
            raise ValueError(f"features={features!r} end in {PHONE_COLUMNS[features]} phone columns, "
                             f"not phone_dim={phone_dim} — set phone_dim={PHONE_COLUMNS[features]}")
        self.part_dims = {"lip": len(LIPS) * 3, "eye": len(EYES) * 3, "head": 7, "torso": torso_dim}
        self.audio_encoder = AudioEncoder(audio_dim, dim, dropout)
        n_bands = len(LIP_BAND_EDGES_HZ) - 1
        extra_cols = {"phones": 0, "phones+energy": 1, "phones+bands": 1 + n_bands}.get(lip_input, 0)   # + loudness
        self.lip_encoder = None if lip_input == "all" else AudioEncoder(phone_dim + extra_cols, dim, dropout)
        if lip_input == "phones+bands":
            self.register_buffer("band_matrix", band_matrix(audio_dim - phone_dim), persistent=False)
        self.cond_proj = nn.Sequential(nn.Linear(cond_dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.extra_proj = nn.Linear(extra_cond_dim, dim)
        self.latent_proj = nn.Linear(latent_dim, dim)
        self.spec = DualAttnDecoder(dim, n_heads, n_layers, ff_mult, dropout, band=0)
        self.prob = DualAttnDecoder(dim, n_heads, n_layers, ff_mult, dropout, band=prob_band)
        self.lip_head = nn.Linear(dim, self.part_dims["lip"])
        self.prob_heads = nn.ModuleDict({p: nn.Linear(dim, self.part_dims[p]) for p in ("eye", "head", "torso")})
        prob_target_dim = sum(self.part_dims[p] for p in ("eye", "head", "torso"))
        self.posterior = PosteriorEncoder(prob_target_dim, dim, latent_dim, latent_stride)
        for part, d in self.part_dims.items():
            self.register_buffer(f"{part}_mean", torch.zeros(d))
            self.register_buffer(f"{part}_std", torch.ones(d))
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_std", torch.ones(cond_dim))

    # ---------------------------------------------------------------- normalisation
    def set_statistics(self, stats: Dict[str, tuple]) -> None:
        """Store per-channel (mean, std) of each part ("lip", "eye", "head", "torso", "cond")."""
        for part, (mean, std) in stats.items():
            getattr(self, f"{part}_mean").copy_(torch.as_tensor(mean).flatten())
            getattr(self, f"{part}_std").copy_(torch.as_tensor(std).flatten().clamp(min=1e-4))

    def normalize(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) physical units -> (B, T, D) normalised."""
        x = x.reshape(*x.shape[:2], -1)
        return (x - getattr(self, f"{part}_mean")) / getattr(self, f"{part}_std")

    def denormalize(self, part: str, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) normalised -> (B, T, D) physical units."""
        return x * getattr(self, f"{part}_std") + getattr(self, f"{part}_mean")

    # ---------------------------------------------------------------- core
    def lip_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, T, F) model features -> (B, T, F') the columns SpecAttn hears (``lip_input``)."""
        kind, k = self.config.lip_input, self.config.phone_dim
        if kind == "all":
            return feats
        phones = feats[..., -k:]
        if kind == "phones":
            return phones
        mel = feats[..., :-k]
        loud = mel.mean(-1, keepdim=True)
        if kind == "phones+energy":
            return torch.cat([phones, loud], -1)
        return torch.cat([phones, loud, mel @ self.band_matrix.to(mel)], -1)

    def _decode(self, feats, cond, extra, z):
        """One window. feats (B,T,F), cond (B,1434), extra (B,E), z (B,T,Z) -> normalised parts."""
        memory = self.audio_encoder(feats)                                    # (B, T, C)
        lip_memory = memory if self.lip_encoder is None else self.lip_encoder(self.lip_features(feats))
        subject = self.cond_proj((cond - self.cond_mean) / self.cond_std)[:, None]  # (B, 1, C)
        spec_q = lip_memory + subject
        lip = self.lip_head(self.spec(spec_q, lip_memory))
        prob_q = subject + self.extra_proj(extra)[:, None] + self.latent_proj(z)
        h = self.prob(prob_q.expand(-1, memory.shape[1], -1), memory)
        out = {"lip": lip}
        out.update({p: head(h) for p, head in self.prob_heads.items()})
        return out, memory

    def forward(self, audio_features: torch.Tensor, cond: torch.Tensor, extra: torch.Tensor,
                targets: Optional[Dict[str, torch.Tensor]] = None, z: Optional[torch.Tensor] = None):
        """Training/teacher-forced pass over one window.

        audio_features (B, T, F); cond (B, 1434) canonical units; extra (B, E);
        targets: dict of normalised parts (B, T, D) — when given, z comes from the posterior.
        Returns (normalised predictions dict, mu, logvar) — mu/logvar None without targets.
        """
        B, T, _ = audio_features.shape
        stride = self.config.latent_stride
        L = latent_length(T, stride)
        mu = logvar = None
        if targets is not None:
            memory = self.audio_encoder(audio_features)
            tgt = torch.cat([targets[p] for p in ("eye", "head", "torso")], -1)
            mu, logvar = self.posterior(tgt, memory.detach(), L)
            z_lat = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        elif z is None:
            z_lat = torch.randn(B, L, self.config.latent_dim, device=audio_features.device)
        else:
            z_lat = z
        pred, _ = self._decode(audio_features, cond, extra, upsample_latent(z_lat, T, stride))
        return pred, mu, logvar

    def loss(self, audio_features, cond, extra, targets: Dict[str, torch.Tensor],
             frame_mask: Optional[torch.Tensor] = None, torso_mask: Optional[torch.Tensor] = None,
             kl_weight: float = 0.01, free_bits: float = 0.1) -> Dict[str, torch.Tensor]:
        """MODA's loss plus KL: 5*MSE(lip) + MSE(eye) + MSE(head) + masked MSE(torso)
        + the same weights on L1 of first differences (velocity) + kl_weight * KL(q || N(0, I)).

        targets: normalised parts (B, T, D). frame_mask (B, T): 1 on real frames, 0 on padding.
        torso_mask (B, T): 1 where the torso is known. KL uses free bits (nats per latent
        dimension) against posterior collapse.
        """
        pred, mu, logvar = self(audio_features, cond, extra, targets=targets)
        B, T = audio_features.shape[:2]
        base = torch.ones(B, T, device=audio_features.device) if frame_mask is None else frame_mask.float()
        weights = {"lip": 5.0, "eye": 1.0, "head": 1.0, "torso": 1.0}
        out = {}
        total = 0.0
        for part, w in weights.items():
            m = base * torso_mask.float() if (part == "torso" and torso_mask is not None) else base
            mv = m[:, 1:] * m[:, :-1]
            err = ((pred[part] - targets[part]) ** 2).mean(-1)
            vel = (pred[part].diff(dim=1) - targets[part].diff(dim=1)).abs().mean(-1)
            mse = (err * m).sum() / m.sum().clamp(min=1)
            v = (vel * mv).sum() / mv.sum().clamp(min=1)
            out[f"{part}_mse"], out[f"{part}_vel"] = mse, v
            total = total + w * (mse + v)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar)                   # (B, L, Z)
        kl = kl.mean(dim=(0, 1)).clamp(min=free_bits).sum()
        out["kl"] = kl
        out["loss"] = total + kl_weight * kl
        return out

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def sample_latent(self, num_frames: int, batch_size: int = 1, generator: Optional[torch.Generator] = None,
                      temperature: float = 1.0) -> torch.Tensor:
        """Latent grid (B, L, Z) ~ N(0, temperature^2), drawn through ``generator`` on the CPU."""
        L = latent_length(num_frames, self.config.latent_stride)
        z = torch.randn(batch_size, L, self.config.latent_dim, generator=generator)
        return (z * (temperature * self.config.latent_scale)).to(self.device, self.dtype)

    @torch.no_grad()
    def generate(self, audio_features: torch.Tensor, cond: torch.Tensor, extra: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, temperature: float = 1.0,
                 latent: Optional[torch.Tensor] = None, frame_range: Optional[tuple] = None,
                 cache: Optional[dict] = None) -> Dict[str, torch.Tensor]:
        """Motion for a clip of any length, in physical units.

        audio_features (T, F) or (B, T, F); cond (1434,) or (B, 1434) canonical units;
        extra (E,) or (B, E) per-clip controls (default: :func:`blink_condition` of the default blink rate).
        latent: a grid from :meth:`sample_latent` for the whole clip (drawn here if None).
        frame_range (start, stop): compute only these frames (for streaming); the windows are
        the same as for the whole clip, so a chunk equals the same frames of a full call.
        cache: a dict kept by the caller across chunks of one clip; windows already computed
        are reused and windows that end before ``start`` are dropped.

        Returns dict "lip" (B, T, 40, 3), "eye" (B, T, 60, 3), "head" (B, T, 7),
        "torso" (B, T, 2), float32 on the model's device.
        """
        weight = next(self.parameters())   # (ModelMixin.device/.dtype walk every submodule per call)
        device, dtype = weight.device, weight.dtype
        squeeze = audio_features.dim() == 2
        feats = audio_features[None] if squeeze else audio_features
        feats = feats.to(device, dtype)
        B, T, _ = feats.shape
        cond = cond.reshape(-1, self.config.cond_dim).expand(B, -1).to(device, dtype)
        if extra is None:
            extra = torch.full((B, self.config.extra_cond_dim), blink_condition(OPTIONS["blink_rate"].default))
        extra = extra.reshape(-1, self.config.extra_cond_dim).expand(B, -1).to(device, dtype)
        if latent is None:
            latent = self.sample_latent(T, B, generator, temperature)
        latent = latent.to(device, dtype)
        start, stop = frame_range or (0, T)
        windows = window_plan(T, self.config.window, self.config.hop)
        acc = {p: torch.zeros(B, stop - start, d, device=device) for p, d in self.part_dims.items()}
        wsum = torch.zeros(stop - start, device=device)
        for w0, w1 in windows:
            if w1 <= start or w0 >= stop:
                continue
            if cache is not None and (w0, w1) in cache:
                pred = cache[(w0, w1)]
            else:
                z = upsample_latent(latent, w1 - w0, self.config.latent_stride, start=w0)
                pred, _ = self._decode(feats[:, w0:w1], cond, extra, z)
                if cache is not None:
                    cache[(w0, w1)] = pred
            blend = crossfade_weights(w0, w1, T, self.config.window - self.config.hop).to(device)
            a, b = max(w0, start), min(w1, stop)
            for p in acc:
                acc[p][:, a - start:b - start] += pred[p][:, a - w0:b - w0].float() * blend[a - w0:b - w0, None]
            wsum[a - start:b - start] += blend[a - w0:b - w0]
        if cache is not None:
            for key in [k for k in cache if k[1] <= start]:
                del cache[key]
        out = {}
        for p in acc:
            x = self.denormalize(p, acc[p] / wsum[None, :, None])
            if p == "lip":
                x = x.view(B, -1, len(LIPS), 3)
            elif p == "eye":
                x = x.view(B, -1, len(EYES), 3)
            out[p] = x[0] if squeeze else x
        return out


def window_plan(num_frames: int, window: int, hop: int) -> list:
    """Windows [(start, stop)] of at most ``window`` frames, ``hop`` apart, covering all frames;
    the last window is aligned to the end so it is full length when the clip allows."""
    if num_frames <= window:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - window, hop)) + [num_frames - window]
    return [(s, s + window) for s in sorted(set(starts))]


def crossfade_weights(w0: int, w1: int, num_frames: int, overlap: int) -> torch.Tensor:
    """Blend weights (w1 - w0,) for a window: raised-cosine ramps of ``overlap`` frames at inner
    edges, flat 1 at the clip's own start and end (never zero, so every frame is covered).

    Raised cosine, not linear: the ramps start and end with zero slope, so the blend of two
    windows that disagree (ProbAttn's head motion, with less context at a window's edge) has no
    kink where a ramp begins or ends (a 15 s clip of moda-base: the step the border adds into
    frame 158, measured against the same clip made in one window, 0.015 px linear, 0.002 px
    raised cosine)."""
    n = w1 - w0
    w = torch.ones(n)
    t = torch.linspace(0.0, 1.0, overlap + 2, dtype=torch.float64)[1:-1] if overlap > 0 else torch.ones(0)
    ramp = (0.5 - 0.5 * torch.cos(math.pi * t)).float()
    r = min(len(ramp), n)
    if w0 > 0 and r:
        w[:r] = ramp[:r]
    if w1 < num_frames and r:
        w[n - r:] = torch.minimum(w[n - r:], ramp[:r].flip(0))
    return w.clamp(min=1e-3)
