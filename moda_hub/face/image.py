"""Reading a portrait into one canonical form: ``(H, W, 3)`` uint8 RGB, upright.

Everything downstream (landmarks, renderer) works on that form, so this module is the
only place that knows about files, PIL modes, bit depths, alpha and EXIF orientation.

Accepted inputs (:data:`ImageLike`):

- a path (``str`` / ``os.PathLike``) to anything PIL decodes (JPEG, PNG, WebP, TIFF, BMP,
  GIF -> first frame, ...), or the file's ``bytes`` / a binary file object;
- a ``PIL.Image.Image`` in any mode: RGB, RGBA/LA/PA (alpha composited on white),
  L/1/P (palette, with or without transparency), 16-bit ``I;16`` / 32-bit ``I`` / float ``F``
  (scaled to 8 bits), CMYK (e.g. Adobe CMYK JPEGs; an embedded ICC profile is honoured);
- a numpy array ``(H, W)``, ``(H, W, 1|2|3|4)`` of uint8, uint16, other integers, bool or
  float (floats in ``[0, 1]`` are taken as unit range, larger ones as 0-255). Arrays are
  taken as RGB(A) as they are - no EXIF, no channel swapping.

EXIF orientation of files and PIL images is applied (``PIL.ImageOps.exif_transpose``),
so landmark pixels refer to the image as a viewer shows it. ``max_side`` caps the size of
very large photos at load time (the pipeline uses it: see ``moda_hub.face.subject``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from moda_hub.errors import ImageDecodeError, InvalidParameterError

ImageLike = Union[str, os.PathLike, bytes, BinaryIO, Image.Image, np.ndarray]

_WHAT_TO_DO = "use a JPEG, PNG or WebP portrait photo"
#: Largest image a file is decoded at, pixels, decided from the file's header before decoding
#: (JPEGs are first reduced by DCT scaling to about ``max_side``, so a 100-megapixel JPEG photo
#: still loads). 40 MP as RGB is 120 MB; a 12 MP phone photo is well inside.
MAX_DECODE_PIXELS = 40_000_000
_ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white


def image_name(image: ImageLike) -> str | None:
    """The file name to show in messages about ``image``, or None when it has none.

    Paths give the path as passed; PIL images opened from a file give that file; arrays,
    bytes and anonymous images give None.
    """
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, Image.Image):
        return getattr(image, "filename", None) or None
    name = getattr(image, "name", None)  # open file objects
    return name if isinstance(name, str) else None


def load_image(image: ImageLike, max_side: int | None = None) -> np.ndarray:
    """Read ``image`` as an upright RGB array.

    Args:
        image: a path, encoded bytes, binary file object, PIL image or numpy array
            (see the module docstring for modes and dtypes).
        max_side (int, optional): downscale (aspect kept) so that the longest side is at most
            this many pixels. JPEG files are decoded at a reduced scale directly (PIL's draft
            mode), so a 10000 x 10000 photo never takes 300 MB. None = full resolution.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous; EXIF orientation applied; alpha composited
        on white; 16-bit and float data scaled to 8 bits.

    Raises:
        ImageDecodeError: the file is missing, empty, not an image, truncated or corrupt,
            or the array has no image shape. The message names the file and what to do.

    Example:
        >>> import skimage.data
        >>> load_image(skimage.data.astronaut()).shape
        (512, 512, 3)
    """
    if max_side is not None and not (isinstance(max_side, (int, np.integer)) and max_side >= 16):
        raise InvalidParameterError(f"max_side must be an integer >= 16 or None, got {max_side!r}")
    if isinstance(image, np.ndarray):
        return _limit_side(_array_to_rgb(image), max_side)
    if isinstance(image, Image.Image):
        return _limit_side(_pil_to_rgb(_upright(image), image_name(image), max_side), max_side)
    if isinstance(image, (str, os.PathLike)):
        return _limit_side(_pil_to_rgb(*_open_path(os.fspath(image), max_side), max_side), max_side)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _limit_side(_pil_to_rgb(_decode(io.BytesIO(bytes(image)), None, max_side), None, max_side),
                           max_side)
    if hasattr(image, "read"):
        name = image_name(image)
        return _limit_side(_pil_to_rgb(_decode(image, name, max_side), name, max_side), max_side)
    raise ImageDecodeError(
        f"cannot read a portrait from a {type(image).__name__!r} object — pass a file path, "
        "a PIL image or an (H, W, 3) uint8 RGB numpy array")


# ----------------------------------------------------------------------------- files

def _open_path(path: str, max_side: int | None = None) -> tuple[Image.Image, str]:
    p = Path(path)
    if not p.exists():
        raise ImageDecodeError(f"image file '{path}' does not exist — check the path")
    if p.is_dir():
        raise ImageDecodeError(f"'{path}' is a folder, not an image file — pass the path of "
                               "one portrait photo")
    if p.stat().st_size == 0:
        raise ImageDecodeError(f"image file '{path}' is empty (0 bytes) — the download or "
                               f"copy probably failed; {_WHAT_TO_DO}")
    with open(p, "rb") as f:
        return _decode(f, path, max_side), path


def _decode(fp: BinaryIO, name: str | None, max_side: int | None = None) -> Image.Image:
    """Decode fully (so truncation shows here), then apply EXIF orientation. With
    ``max_side``, JPEGs are decoded at the smallest DCT scale that keeps that many pixels."""
    shown = f"'{name}'" if name else "the image data"
    try:
        im = Image.open(fp)                       # reads the header only
        if max_side is not None and im.format == "JPEG" and max(im.size) > max_side:
            im.draft(None, (max_side, max_side))
        _check_pixels(im, shown)                  # by pixel count, before a single pixel is decoded
        im.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{shown} is not an image file PIL can read — "
                               f"{_WHAT_TO_DO}") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{shown} is too large to decode safely ({e}) — downscale it below "
                               f"{MAX_DECODE_PIXELS / 1e6:.0f} megapixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(f"{shown} is truncated or corrupt ({e}) — re-export or "
                               f"re-download it; {_WHAT_TO_DO}") from None
    return _upright(im)


def _check_pixels(im: Image.Image, shown: str) -> None:
    """Refuse, from the header, a file whose decoded size (after any reduced JPEG decoding) is over
    :data:`MAX_DECODE_PIXELS` — a 0.5 MB PNG can hold 144 megapixels (430 MB as RGB)."""
    w, h = im.size
    if w * h > MAX_DECODE_PIXELS:
        raise ImageDecodeError(
            f"{shown} is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels), more than the "
            f"{MAX_DECODE_PIXELS / 1e6:.0f} megapixels a portrait is decoded at — downscale it (4096 px on the "
            "longer side is plenty) or save it as a JPEG, which is decoded at reduced size")


def _upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - malformed EXIF must not stop a readable image
        return im


def _limit_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``(H, W, 3)`` uint8 so its longest side is at most ``max_side`` px."""
    h, w = rgb.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return rgb
    k = max_side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    return np.ascontiguousarray(np.asarray(
        Image.fromarray(rgb).resize(size, Image.LANCZOS, reducing_gap=3.0), dtype=np.uint8))


# ----------------------------------------------------------------------------- modes

def _pil_to_rgb(im: Image.Image, name: str | None, max_side: int | None = None) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB; with ``max_side`` the RGB image is
    downscaled before it becomes an array (one full-size copy fewer)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(im))
    if mode == "CMYK" or (mode == "RGB" and im.info.get("icc_profile")):
        im = _to_srgb(im)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, _ALPHA_BACKGROUND + (255,))
        im = Image.alpha_composite(background, im)
    try:
        rgb = im if im.mode == "RGB" else im.convert("RGB")
    except (ValueError, OSError) as e:
        shown = f"'{name}'" if name else "the image"
        raise ImageDecodeError(f"{shown} has pixel mode {mode!r} that cannot be converted "
                               f"to RGB ({e}) — {_WHAT_TO_DO}") from None
    if max_side is not None and max(rgb.size) > max_side:
        k = max_side / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.width * k)), max(1, round(rgb.height * k))),
                         Image.LANCZOS, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def _to_srgb(im: Image.Image) -> Image.Image:
    """Convert using the embedded ICC profile when there is one (CMYK, wide-gamut RGB)."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                             outputMode="RGB")
        except Exception:  # noqa: BLE001 - a bad profile falls back to PIL's conversion
            pass
    return im.convert("RGB")


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    """``(H, W[, C])`` array of any numeric dtype -> ``(H, W, 3)`` uint8 RGB."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (2, 3, 4)) \
            or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageDecodeError(
            f"an array of shape {a.shape} is not an image — pass (H, W, 3) RGB, (H, W, 4) "
            "RGBA or (H, W) grayscale")
    a = _to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[-1] == 2:  # gray + alpha
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=-1), a[..., 1:]], axis=-1)
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255.0
        bg = np.asarray(_ALPHA_BACKGROUND, np.float32)
        a = np.rint(a[..., :3] * alpha + bg * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return (a.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        hi = int(a.max()) if a.size else 0
        scale = 255.0 / (65535.0 if 255 < hi <= 65535 else max(hi, 255))
        return np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        f = np.nan_to_num(a.astype(np.float64))
        if f.size and f.max() <= 1.0:
            f = f * 255.0
        return np.clip(np.rint(f), 0, 255).astype(np.uint8)
    raise ImageDecodeError(f"an array of dtype {a.dtype} is not an image — pass uint8 RGB")
