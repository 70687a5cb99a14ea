"""Stage 2 — the facial composer (FaCo): sparse lip/eye motion -> dense 478-point mesh offsets.

Per frame, independently: the 40 lip offsets, the 60 eye/brow/iris offsets and the
subject's canonical mesh go in; offsets for all 478 MediaPipe points come out, so that the
jaw, chin, cheeks and eyelid skin move with the lips and eyes. The offsets of the lip and
eye points themselves are passed through unchanged (the composer only fills in the rest).

All quantities are in canonical units (outer-eye-corner distance = 1), see ``moda_hub.face``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..face.topology import EYES, LIPS, NUM_LANDMARKS


class FacialComposer(ModelMixin, ConfigMixin):
    """Dense mesh offsets from lip and eye offsets.

    Args:
        hidden (int, default 512): MLP width.
        n_layers (int, default 3): hidden layers.
        cond_dim (int, default 1434): subject canonical mesh, flattened.
        offset_scale (float, default 0.05): typical offset size in canonical units; inputs and
            outputs are divided/multiplied by it so the MLP works near unit scale.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, hidden: int = 512, n_layers: int = 3, cond_dim: int = NUM_LANDMARKS * 3,
                 offset_scale: float = 0.05):
        super().__init__()
        in_dim = (len(LIPS) + len(EYES)) * 3
        self.cond_proj = nn.Linear(cond_dim, hidden)
        layers = []
        self.in_proj = nn.Linear(in_dim, hidden)
        for _ in range(n_layers):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        self.body = nn.Sequential(*layers, nn.GELU())
        self.out = nn.Linear(hidden, NUM_LANDMARKS * 3)
        self.register_buffer("lips_idx", torch.as_tensor(LIPS), persistent=False)
        self.register_buffer("eyes_idx", torch.as_tensor(EYES), persistent=False)
        self.register_buffer("cond_mean", torch.zeros(cond_dim))

    def forward(self, lip: torch.Tensor, eye: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """lip (N, 40, 3), eye (N, 60, 3), cond (N, 1434) or (1434,) -> dense offsets (N, 478, 3).

        All canonical units. The lip and eye points of the result equal the inputs exactly.
        """
        N = lip.shape[0]
        s = self.config.offset_scale
        x = torch.cat([lip.reshape(N, -1), eye.reshape(N, -1)], -1) / s
        c = cond.reshape(-1, self.config.cond_dim).to(x.dtype) - self.cond_mean
        h = self.in_proj(x) + self.cond_proj(c)
        dense = (self.out(self.body(h)) * s).view(N, NUM_LANDMARKS, 3)
        dense = dense.index_copy(1, self.lips_idx, lip.to(dense.dtype))
        return dense.index_copy(1, self.eyes_idx, eye.to(dense.dtype))

    #: Frames per forward pass in :meth:`dense_offsets`: GEMM kernels round rows differently for
    #: other batch sizes (a ragged tail; AVX-512 MKL below 16 rows; 8 vs 32 rows), and a frame's
    #: mesh must not depend on the chunk it falls in.
    BLOCK_FRAMES = 16

    def dense_offsets(self, lip: np.ndarray, eye: np.ndarray, cond: torch.Tensor) -> np.ndarray:
        """Dense offsets (T, 478, 3) float32 numpy for a clip of any length: lip (T, 40, 3) and
        eye (T, 60, 3) numpy, cond (1434,) tensor on the composer's device and dtype; canonical
        units. Run in blocks of exactly :data:`BLOCK_FRAMES` frames (the last one padded by
        repeating its last frame), so every frame gets the same numbers in any chunking."""
        T, n = len(lip), self.BLOCK_FRAMES
        rows = np.minimum(np.arange(T + (-T) % n), T - 1)
        lip_t = torch.from_numpy(lip[rows]).to(cond)
        eye_t = torch.from_numpy(eye[rows]).to(cond)
        dense = torch.cat([self(lip_t[i:i + n], eye_t[i:i + n], cond) for i in range(0, len(rows), n)])
        return dense.float().cpu().numpy()[:T]

    def loss(self, lip, eye, cond, dense_target) -> torch.Tensor:
        """MSE over the points the composer predicts (all but the given lip/eye points),
        in units of ``offset_scale``; dense_target (N, 478, 3)."""
        pred = self.forward(lip, eye, cond)
        return (((pred - dense_target) / self.config.offset_scale) ** 2).mean()
