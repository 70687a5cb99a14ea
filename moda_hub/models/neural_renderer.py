"""Stage 3, person-specific — MODA's temporal-guided neural renderer.

An image-to-image U-Net trained on one person's own talking video (``moda train --stage
renderer``). For each output frame it sees, on the face crop (the *canvas*):

- the target frame's **landmark sketch** (:mod:`moda_hub.render.sketch`: contours, eyes, lips,
  the mouth opening and a depth shading of the mesh) — what the face should look like;
- a **reference frame** of the person (the portrait) with its sketch — what the person looks
  like: skin, hair, background, lighting;
- the **previous output frame** with its sketch — real temporal guidance: the network keeps what
  should not change and keeps teeth and inner mouth consistent from frame to frame (the original
  MODA code only encoded the frame index);
- the portrait **warped** to the target mesh by the one-shot
  :class:`~moda_hub.render.warp.WarpRenderer` (a geometric first guess, at the canvas' full
  resolution). The network outputs a *correction* of that guess — the inner mouth, teeth, skin
  folds and shading the warp cannot know — computed at ``image_size`` and added at the canvas
  resolution (``canvas_size``), so a small, fast network keeps the warp's full-resolution detail.
  Untrained (the last layer starts at zero) it renders exactly what the WarpRenderer renders.

Because of the previous-frame input, rendering is sequential: the state (last output frame and
its sketch) lives in the :class:`NeuralPortrait` returned by :meth:`NeuralRenderer.prepare`, so
rendering a clip in chunks (``ModaPipeline.stream``) gives exactly the frames of rendering it at
once (``ModaPipeline.__call__``).

The renderer has the same ``prepare`` / ``render`` interface as the WarpRenderer, so it is a
component swap:

    >>> from moda_hub import ModaPipeline                                   # doctest: +SKIP
    >>> from moda_hub.models.neural_renderer import NeuralRenderer
    >>> pipe = ModaPipeline.from_pretrained("pretrained/moda-base",
    ...                                     renderer=NeuralRenderer.from_pretrained("runs/me/renderer"))
    >>> pipe.save_pretrained("runs/me/pipeline")                          # a personal pipeline

Weights load only from safetensors, checked (``moda_hub.weights``); problems raise ``WeightsError``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..errors import InvalidParameterError
from ..render.crop import CropBox
from ..render.sketch import NUM_CHANNELS as SKETCH_CHANNELS
from ..render.sketch import draw_sketch
from ..render.warp import WarpRenderer, frame_meshes
from ..weights import load_component


# ----------------------------------------------------------------------------- image helpers

def to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    a = np.ascontiguousarray(images_uint8)
    x = torch.from_numpy(a if a.flags.writeable else a.copy()).float()
    return x.movedim(-1, -3) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) float in [-1, 1] -> (..., H, W, 3) uint8 (rounded, clipped)."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window) of image batches (B, C, H, W) in [-1, 1];
    returns (B,) (computed on [0, 1] intensities, constants for a dynamic range of 1)."""
    a, b = (a.float() + 1) / 2, (b.float() + 1) / 2
    c = a.shape[1]
    x = torch.arange(window, dtype=torch.float32, device=a.device) - (window - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = (g / g.sum())
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, k, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa, sbb, sab = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images or stacks (peak 255)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


# ----------------------------------------------------------------------------- network

def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 skip when the width changes. (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, 70x70 receptive field at 256 px): (B, 3 + sketch, H, W) -> (B, 1, h, w) logits."""

    def __init__(self, in_channels: int, base: int = 32, layers: int = 3):
        super().__init__()
        mods, ch = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)], base
        for i in range(1, layers):
            nxt = min(base * 2 ** i, 256)
            mods += [nn.Conv2d(ch, nxt, 4, 2, 1), _norm(nxt), nn.LeakyReLU(0.2)]
            ch = nxt
        mods += [nn.Conv2d(ch, ch, 4, 1, 1), _norm(ch), nn.LeakyReLU(0.2), nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


@dataclass
class NeuralPortrait:
    """Everything :meth:`NeuralRenderer.render` needs about one portrait, and its running state.

    box: the canvas in the portrait (``canvas_size`` square, see ``CropBox``; the same box as the
        WarpRenderer's ``canvas_size`` crop of this portrait).
    warp: the WarpRenderer's prepared portrait on that canvas (the geometric first guess).
    reference: (1, 3, S, S) float32 in [-1, 1], the portrait on the network's ``image_size`` grid;
        reference_sketch: (1, C, S, S) its landmark sketch.
    output_size: side of rendered crops in pixels, or 0 = full portrait with the canvas pasted back.
    full_image: (H, W, 3) uint8 portrait (output_size 0), else None.
    paste_matrix: (2, 3) float32 affine map canvas pixel indices -> full-image pixel indices;
        paste_mask: (H, W, 1) float32 feathered weight of the canvas in the full image;
        paste_region: (y0, y1, x0, x1) the full-image rows/columns the canvas touches.
    previous, previous_sketch: the last output frame on the ``image_size`` grid and its sketch
        (the temporal guidance); they start as the reference. frames_rendered: frames so far.
    """

    box: CropBox
    warp: object
    reference: torch.Tensor
    reference_sketch: torch.Tensor
    output_size: int
    full_image: Optional[np.ndarray] = None
    paste_matrix: Optional[np.ndarray] = None
    paste_mask: Optional[np.ndarray] = None
    paste_region: Tuple[int, int, int, int] = (0, 0, 0, 0)
    previous: Optional[torch.Tensor] = None
    previous_sketch: Optional[torch.Tensor] = None
    frames_rendered: int = 0

    def reset(self) -> None:
        """Start a new clip: the previous frame becomes the reference again."""
        self.previous, self.previous_sketch, self.frames_rendered = self.reference, self.reference_sketch, 0

    @property
    def output_hw(self) -> tuple[int, int]:
        """(height, width) of rendered frames."""
        if self.full_image is not None:
            return self.full_image.shape[:2]
        return self.output_size, self.output_size


class NeuralRenderer(ModelMixin, ConfigMixin):
    r"""Person-specific renderer: warp + landmark sketch + reference frame + previous output -> frame.

    Args:
        image_size (int, default 128): side of the grid the U-Net works on, pixels (128 trains fast
            on a CPU; 256 on a GPU). A multiple of ``2 ** (len(channel_mult) - 1)``.
        canvas_size (int, default 256): side of the face crop that is rendered (the warp and the
            output); the network's correction is upsampled to it. Equal to the crop size of the
            training data (``moda prepare video --crop-size``).
        output_size (int, default 0): default size of rendered frames: 256 or 512 (the canvas,
            resized) or 0 (the canvas pasted back into the full portrait).
        base_channels (int, default 16): width of the U-Net's first level.
        channel_mult (list of int, default [1, 2, 4, 8, 8]): width of each level over
            ``base_channels``; each level after the first halves the resolution.
        blocks_per_level (int, default 1): residual blocks per level (encoder and decoder).
        sketch_channels (int, default 5): channels of :func:`~moda_hub.render.sketch.draw_sketch`.
        crop_scale (float, default 2.2), crop_shift_y (float, default 0.05): the crop, as in
            :class:`~moda_hub.render.warp.WarpRenderer` (crop side over the face's larger side;
            centre moved down by this fraction of the side).
        feather (float, default 0.06): paste-back seam width, fraction of the canvas side.

    :meth:`forward` (S = ``image_size``, K = ``canvas_size``): warped (B, 3, K, K), target_sketch
    (B, C, S, S), reference (B, 3, S, S), reference_sketch, previous (B, 3, S, S), previous_sketch
    -> (B, 3, K, K); images in [-1, 1].
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, image_size: int = 128, canvas_size: int = 256, output_size: int = 0,
                 base_channels: int = 16, channel_mult: tuple = (1, 2, 4, 8, 8), blocks_per_level: int = 1,
                 sketch_channels: int = SKETCH_CHANNELS, crop_scale: float = 2.2,
                 crop_shift_y: float = 0.05, feather: float = 0.06):
        super().__init__()
        mult = [int(m) for m in channel_mult]
        self.register_to_config(channel_mult=mult)
        if image_size % (2 ** (len(mult) - 1)) or image_size < 32:
            raise InvalidParameterError(f"image_size={image_size} must be >= 32 and a multiple of "
                                        f"{2 ** (len(mult) - 1)} (one halving per U-Net level)")
        if canvas_size < image_size:
            raise InvalidParameterError(f"canvas_size={canvas_size} must be at least image_size={image_size}")
        if output_size < 0:
            raise InvalidParameterError(f"output_size={output_size!r} — use 256 or 512, or 0 (full image)")
        if sketch_channels != SKETCH_CHANNELS:
            raise InvalidParameterError(f"sketch_channels must be {SKETCH_CHANNELS} (moda_hub.render.sketch)")
        widths = [base_channels * m for m in mult]
        cin = 3 * sketch_channels + 9                   # 3 sketches, warped, reference, previous
        self.inp = nn.Conv2d(cin, widths[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch, skips = widths[0], []
        for i, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                blocks.append(ResBlock(ch, w))
                ch = w
            self.down.append(blocks)
            skips.append(ch)
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
        self.mid = ResBlock(ch, ch)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for k in range(blocks_per_level):
                blocks.append(ResBlock(ch + (skips[i] if k == 0 else 0), widths[i]))
                ch = widths[i]
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(ch, widths[i - 1], 3, padding=1) if i > 0 else nn.Identity())
            if i > 0:
                ch = widths[i - 1]
        self.out_norm = _norm(ch)
        self.out = nn.Conv2d(ch, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)                 # untrained = the warp
        nn.init.zeros_(self.out.bias)
        self._warp = None

    # ------------------------------------------------------------------ network
    def to_grid(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, K, K) canvas images -> (B, 3, S, S) on the network's grid (area average)."""
        S = int(self.config.image_size)
        return images if images.shape[-1] == S else F.interpolate(images, size=(S, S), mode="area")

    def forward(self, warped: torch.Tensor, target_sketch: torch.Tensor, reference: torch.Tensor,
                reference_sketch: torch.Tensor, previous: torch.Tensor, previous_sketch: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.to_grid(warped), target_sketch, reference, reference_sketch, previous, previous_sketch], 1)
        h = self.inp(x)                                                    # (B, W0, S, S)
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for b in blocks:
                h = b(h)
            skips.append(h)
            h = down(h)
        h = self.mid(h)
        for blocks, up in zip(self.up, self.upsample):
            h = torch.cat([h, skips.pop()], 1)
            for b in blocks:
                h = b(h)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        correction = self.out(F.silu(self.out_norm(h)))                    # (B, 3, S, S)
        K = warped.shape[-1]
        if K != correction.shape[-1]:
            correction = F.interpolate(correction, size=(K, K), mode="bilinear", align_corners=False)
        return (warped + correction).clamp(-1.0, 1.0)                      # (B, 3, K, K)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.5) -> dict:
        """Reconstruction losses of (B, 3, K, K) frames in [-1, 1]: ``l1``, ``ssim`` (1 - SSIM) and
        ``loss`` = l1 + ssim_weight * ssim."""
        l1 = (pred - target).abs().mean()
        s = 1.0 - ssim(pred, target).mean()
        return {"loss": l1 + ssim_weight * s, "l1": l1, "ssim": s}

    # ------------------------------------------------------------------ canvas helpers
    @property
    def warp_renderer(self):
        """The WarpRenderer that makes the first guess (same crop as this renderer's canvas)."""
        if self._warp is None:

            cfg = self.config
            self._warp = WarpRenderer(output_size=int(cfg.canvas_size), crop_scale=cfg.crop_scale,
                                      crop_shift_y=cfg.crop_shift_y)
        return self._warp

    def sketch(self, landmarks_canvas: np.ndarray) -> np.ndarray:
        """(478, 3) canvas pixels -> (C, S, S) float32 sketch on the network's grid."""
        k = self.config.image_size / self.config.canvas_size
        return draw_sketch(np.asarray(landmarks_canvas, np.float32) * np.float32(k), int(self.config.image_size))

    # ------------------------------------------------------------------ renderer interface
    def prepare(self, image_rgb: np.ndarray, ref_landmarks_px: np.ndarray,
                output_size: Optional[int] = None) -> NeuralPortrait:
        """Everything that depends only on the portrait (its canvas, tensors and paste-back).

        Args:
            image_rgb ((H, W, 3) uint8): the portrait, RGB — ideally a frame of the person's video.
            ref_landmarks_px ((478, 3) float): its MediaPipe mesh, full-image pixels.
            output_size (int, optional): overrides ``config.output_size`` (0 = full image).

        Returns:
            [`NeuralPortrait`] to pass to :meth:`render`, frame after frame.
        """
        image = np.ascontiguousarray(np.asarray(image_rgb))
        ref = np.asarray(ref_landmarks_px, np.float32)       # both checked by the warp's prepare below
        size = self.config.output_size if output_size is None else int(output_size)
        if size < 0:
            raise InvalidParameterError(f"output_size={size!r} — use 256 or 512 (a face crop) or 0 (the full image)")
        warp = self.warp_renderer.prepare(image, ref, output_size=int(self.config.canvas_size))
        box = warp.box
        weight = next(self.parameters())
        ref_img = self.to_grid(to_tensor(warp.image)[None].to(weight.device, weight.dtype))
        ref_sk = torch.from_numpy(self.sketch(box.to_canvas(ref)))[None].to(weight.device, weight.dtype)
        p = NeuralPortrait(box=box, warp=warp, reference=ref_img, reference_sketch=ref_sk, output_size=size)
        if size == 0:
            p.full_image = image
            p.paste_matrix, p.paste_mask, p.paste_region = self._paste(box, image.shape[:2])
        p.reset()
        return p

    def _paste(self, box: CropBox, image_hw):
        K = int(self.config.canvas_size)
        s = 1.0 / box.scale                                         # full px per canvas px
        # pixel centres: full index + 0.5 = (canvas index + 0.5) * s + x0
        m = np.float32([[s, 0, box.x0 + 0.5 * s - 0.5], [0, s, box.y0 + 0.5 * s - 0.5]])
        i = np.arange(K, dtype=np.float32)
        ramp = np.clip(np.minimum(i + 0.5, K - 0.5 - i) / max(1.0, self.config.feather * K), 0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)
        mask = np.ascontiguousarray(ramp[:, None] * ramp[None, :])
        H, W = image_hw
        full = cv2.warpAffine(mask, m, (W, H), flags=cv2.INTER_LINEAR, borderValue=0)
        ys, xs = np.nonzero(full > 0)
        region = (0, 0, 0, 0) if len(ys) == 0 else (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
        return m, full[..., None], region

    @torch.no_grad()
    def render(self, prepared: NeuralPortrait, landmarks_px: np.ndarray,
               torso_offset_px: Optional[np.ndarray] = None) -> np.ndarray:
        """Render the next frames of a clip, one after the other (each sees the one before).

        Args:
            prepared ([`NeuralPortrait`]): from :meth:`prepare`; its state moves on with every
                frame (call ``prepared.reset()`` to start a new clip).
            landmarks_px ((T, 478, 3) or (478, 3) float): meshes in full-portrait pixels.
            torso_offset_px ((T, 2) float, optional): x, y shift of the upper body, full-portrait
                pixels (moves the torso in the warp); None keeps it still.

        Returns:
            (T, h, w, 3) uint8: square crops (output_size > 0) or full portraits (output_size 0).
        """
        lm, torso = frame_meshes(landmarks_px, torso_offset_px)
        h, w = prepared.output_hw
        frames = np.empty((len(lm), h, w, 3), np.uint8)
        ref, ref_sk = prepared.reference, prepared.reference_sketch
        for t in range(len(lm)):
            warped = self.warp_renderer.render(prepared.warp, lm[t:t + 1], None if torso is None else torso[t:t + 1])
            warped = to_tensor(warped)[0][None].to(ref)
            sk = torch.from_numpy(self.sketch(prepared.box.to_canvas(lm[t])))[None].to(ref)
            pred = self(warped, sk, ref, ref_sk, prepared.previous, prepared.previous_sketch)   # (1, 3, K, K)
            prepared.previous, prepared.previous_sketch = self.to_grid(pred), sk
            prepared.frames_rendered += 1
            frames[t] = self._output(prepared, to_uint8(pred[0]))
        return frames

    def _output(self, p: NeuralPortrait, canvas: np.ndarray) -> np.ndarray:
        if p.full_image is None:
            K = canvas.shape[0]
            if p.output_size == K:
                return canvas
            interp = cv2.INTER_AREA if p.output_size < K else cv2.INTER_CUBIC
            return cv2.resize(canvas, (p.output_size, p.output_size), interpolation=interp)
        y0, y1, x0, x1 = p.paste_region
        out = p.full_image.copy()
        if y1 > y0:
            m = p.paste_matrix.copy()
            m[:, 2] -= (x0, y0)
            warped = cv2.warpAffine(canvas, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
            a = p.paste_mask[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = (warped * a + out[y0:y1, x0:x1] * (1 - a) + 0.5).clip(0, 255).astype(np.uint8)
        return out

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a trained renderer folder (config.json + safetensors) with the checks of
        :mod:`moda_hub.weights`: safetensors only, every tensor present with its shape, all finite;
        any problem raises ``WeightsError`` naming the file (``subfolder`` is supported)."""

        return load_component(cls, super().from_pretrained, pretrained_model_name_or_path, **kwargs)
