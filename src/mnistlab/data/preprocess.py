"""Decode user images safely and turn them into MNIST-like 28x28 inputs.

MNIST digits are white ink (1.0) on black (0.0), size-normalised to fit a 20x20 box keeping their aspect ratio,
anti-aliased, and placed in a 28x28 frame so that their centre of mass sits at (14, 14). ``to_mnist`` and
``from_pixels`` reproduce that; ``decode_image`` refuses anything that cannot be decoded trustworthily.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlab.errors import InputImageError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
BLANK_CONTRAST = 0.1  # ink must differ from the background by 10% of the full range
NOISE = 0.2  # ink below this fraction of its peak is noise (more if the background is noisier)
WORK_SIZE = 2048  # larger images are box-filtered down to this longer side before preprocessing
BOX, FRAME = 20, 28  # the digit fits BOX x BOX and sits in a FRAME x FRAME image
_OPEN_LOCK = threading.Lock()  # warnings.catch_warnings is process-global state


def decode_image(data: bytes | str | Path, name: str | None = None) -> Image.Image:
    """Open image bytes or a file safely and return it as an 8-bit grayscale ("L") image.

    Raises InputImageError (one line naming the input) for an unreadable, empty, non-image, truncated,
    oversized (> MAX_PIXELS), multi-frame or unsupported-mode image. EXIF orientation is applied,
    16-bit images are rescaled (not clipped) and transparency is flattened (see ``_to_grayscale``).
    """
    label = name or (str(data) if isinstance(data, (str, Path)) else "image")
    if isinstance(data, (str, Path)):
        try:
            data = Path(data).read_bytes()
        except OSError as e:
            raise InputImageError(f"{label}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise InputImageError(f"{label}: empty file, not an image")
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputImageError(
            f"{label}: image too large (decompression bomb?), limit {MAX_PIXELS:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise InputImageError(f"{label}: not an image (unrecognised format)") from None
    except Exception as e:  # Pillow plugins raise many kinds of errors on malformed headers
        raise InputImageError(f"{label}: not a valid image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InputImageError(
            f"{label}: image too large ({w}x{h} = {w * h:,} pixels), limit {MAX_PIXELS:,} pixels"
        )
    if w < 1 or h < 1:
        raise InputImageError(f"{label}: image has no pixels ({w}x{h})")
    if getattr(im, "is_animated", False):
        n = getattr(im, "n_frames", "several")
        raise InputImageError(f"{label}: animated/multi-frame image ({n} frames); pass a single frame")
    try:
        im.load()  # forces a full decode: truncated files fail here (LOAD_TRUNCATED_IMAGES stays off)
        im = ImageOps.exif_transpose(im)
    except Exception as e:
        raise InputImageError(f"{label}: truncated or corrupt image ({e})") from None
    return _to_grayscale(im, label)


def _to_grayscale(img: Image.Image, label: str = "image") -> Image.Image:
    """Convert any supported mode to 8-bit grayscale "L".

    16-bit images ("I;16*", and "I" with values above 255) are scaled by 255/65535, not clipped;
    "F" images are taken as [0, 1]. Transparency is composited over a background chosen from the mostly
    opaque pixels (alpha > 0.5, so colour hidden under transparent pixels is ignored): if at least 99% of them
    lie on one side of mid-gray (ink of one colour on a transparent background), the background is the
    contrasting extreme (white under dark ink, black under light ink); otherwise (an opaque sheet with ink on
    it) it is the sheet's colour, their alpha-weighted median luminance.
    """
    mode = img.mode
    if mode == "L":
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            a = a * 255.0  # float images are taken as [0, 1]
        elif mode.startswith("I;16") or a.max() > 255:
            a = a / 257.0  # 16-bit range: 65535 -> 255
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    transparent = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in img.info)
    if not transparent:
        if mode not in ("1", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
            raise InputImageError(f"{label}: unsupported image mode {mode}")
        try:
            return img.convert("L") if mode in ("1", "P") else img.convert("RGB").convert("L")
        except ValueError:
            raise InputImageError(f"{label}: unsupported image mode {mode}") from None
    try:
        la = np.asarray(img.convert("RGBA").convert("LA"), dtype=np.float64) / 255.0
    except ValueError:
        raise InputImageError(f"{label}: unsupported image mode {mode}") from None
    gray, alpha = la[..., 0], la[..., 1]
    if alpha.max() < 1e-6:  # fully transparent: nothing drawn
        return Image.new("L", img.size, 255)
    strong = alpha * (alpha > 0.5) if alpha.max() > 0.5 else alpha  # edge pixels may carry blended colour
    weight = strong.sum()
    light = float((strong * (gray >= 0.5)).sum() / weight)  # share of light pixels among the opaque ones
    if min(light, 1.0 - light) < 0.01:  # one ink colour on a transparent background: contrast with it
        bg = 0.0 if light > 0.5 else 1.0
    else:  # an opaque sheet with ink on it: the transparent area takes the sheet's colour
        order = np.argsort(gray, axis=None)
        cum = np.cumsum(strong.ravel()[order])
        bg = float(gray.ravel()[order][np.searchsorted(cum, weight / 2)])
    out = alpha * gray + (1.0 - alpha) * bg
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), "L")


def to_mnist(img: Image.Image) -> tuple[torch.Tensor, bool]:
    """Preprocess a PIL image like MNIST: returns a (28, 28) float32 tensor in [0, 1] and a ``blank`` flag."""
    gray = _to_grayscale(img)
    if max(gray.size) > WORK_SIZE:  # bound time and memory: the digit ends up 20 px tall anyway
        scale = WORK_SIZE / max(gray.size)
        gray = gray.resize((max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.BOX)
    return _centre(np.asarray(gray, dtype=np.float64) / 255.0)


def from_pixels(pixels: Sequence[Sequence[float]] | np.ndarray) -> tuple[torch.Tensor, bool]:
    """Validate a 28x28 grid of numbers in [0, 1] (either polarity) and preprocess it like ``to_mnist``."""
    try:
        a = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise InputImageError("pixels: must be a 28x28 array of numbers") from None
    if a.shape != (FRAME, FRAME):
        raise InputImageError(
            f"pixels: expected shape 28x28, got {'x'.join(map(str, a.shape)) or 'a scalar'}"
        )
    if not np.isfinite(a).all():
        raise InputImageError("pixels: values must be finite numbers (no NaN or infinity)")
    if a.min() < 0.0 or a.max() > 1.0:
        raise InputImageError(f"pixels: values must lie in [0, 1], got [{a.min():g}, {a.max():g}]")
    return _centre(a)


def _centre(gray: np.ndarray) -> tuple[torch.Tensor, bool]:
    """The shared pipeline on a 2-D float array in [0, 1] (any polarity, any size).

    Background = median of a border ring (5% of the shorter side); the image is inverted when that is
    brighter than the mean (dark ink on light paper). Blank when the ink's contrast is < BLANK_CONTRAST.
    Ink below max(NOISE, 6 robust sigmas of the border) of its peak is dropped unless it touches stronger
    ink (anti-aliasing is kept, specks and JPEG ringing are not), then crop, fit 20x20, centre of mass.
    """
    blank = torch.zeros(FRAME, FRAME, dtype=torch.float32), True
    h, w = gray.shape
    k = max(1, min(h, w) // 20)  # border ring: 5% of the shorter side, at least one pixel
    border = np.concatenate([gray[:k].ravel(), gray[-k:].ravel(), gray[:, :k].ravel(), gray[:, -k:].ravel()])
    bg = float(np.median(border))
    if bg > gray.mean():  # the ink pulls the mean away from the background: here the ink is darker
        gray, bg, border = 1.0 - gray, 1.0 - bg, 1.0 - border
    ink = gray - bg
    peak = float(ink.max())
    if peak < BLANK_CONTRAST:
        return blank
    ink = np.clip(ink / peak, 0.0, 1.0)
    sigma = 1.4826 * float(np.median(np.abs(border - bg)))  # robust noise level of the paper (photos, scans)
    noise = max(NOISE, min(0.5, 6 * sigma / peak))
    strong = np.pad(ink > noise, 1)
    near = np.zeros_like(ink, dtype=bool)  # within one pixel of strong ink: its anti-aliased fringe
    for dy in range(3):
        for dx in range(3):
            near |= strong[dy : dy + h, dx : dx + w]
    ink[~near] = 0.0
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    scale = BOX / max(ink.shape)
    size = (max(1, round(ink.shape[1] * scale)), max(1, round(ink.shape[0] * scale)))
    small = Image.fromarray(ink.astype(np.float32), "F").resize(
        size, Image.BILINEAR
    )  # anti-aliased, no ringing
    patch = np.clip(np.asarray(small), 0.0, 1.0)
    if patch.max() <= 0.0:
        return blank
    patch = patch / patch.max()
    ys, xs = np.indices(patch.shape)
    mass = patch.sum()
    cy, cx = (ys * patch).sum() / mass, (xs * patch).sum() / mass
    # integer shift putting the centre of mass in [13.5, 14.5), as in MNIST itself; clamped inside the frame
    top = min(max(math.ceil(FRAME / 2 - 0.5 - cy), 0), FRAME - patch.shape[0])
    left = min(max(math.ceil(FRAME / 2 - 0.5 - cx), 0), FRAME - patch.shape[1])
    out = torch.zeros(FRAME, FRAME, dtype=torch.float32)
    out[top : top + patch.shape[0], left : left + patch.shape[1]] = torch.from_numpy(patch.astype(np.float32))
    return out, False


def prepare_batch(tensors: Sequence[torch.Tensor], normalise: tuple[float, float] | None) -> torch.Tensor:
    """Stack (28, 28) tensors into an (N, 1, 28, 28) batch with the model's input normalisation, if any."""
    if not tensors:
        return torch.zeros(0, 1, FRAME, FRAME)
    x = torch.stack([t.reshape(FRAME, FRAME).float() for t in tensors]).unsqueeze(1)
    if normalise is not None:
        mean, std = normalise
        x = (x - mean) / std
    return x
