"""Safe image decoding and MNIST-style preprocessing (mnistlab.data.preprocess)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, features

from mnistlab.data.preprocess import MAX_PIXELS, decode_image, from_pixels, prepare_batch, to_mnist
from mnistlab.errors import InputImageError

# Strokes in a unit square scaled to the canvas height; on a wide canvas the digit sits off-centre on purpose.
SHAPES = {
    "7": [((0.30, 0.15), (0.60, 0.15)), ((0.60, 0.15), (0.40, 0.85))],
    "1": [((0.45, 0.10), (0.45, 0.90))],
    "4": [((0.30, 0.10), (0.25, 0.55)), ((0.25, 0.55), (0.55, 0.55)), ((0.48, 0.25), (0.48, 0.90))],
}


def draw(shape: str, size: tuple[int, int], ink: int = 0, paper: int = 255) -> Image.Image:
    """Render a digit-like shape with thick anti-aliased lines (drawn at 4x, then box-filtered), ink on paper."""
    w, h = size[0] * 4, size[1] * 4
    img = Image.new("L", (w, h), paper)
    pen = ImageDraw.Draw(img)
    dx = 0.3 * (w - h)
    for (x0, y0), (x1, y1) in SHAPES[shape]:
        pen.line([(dx + x0 * h, y0 * h), (dx + x1 * h, y1 * h)], fill=ink, width=round(0.13 * h))
    return img.resize(size, Image.BOX)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data (a cheap decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def ink_box(t: torch.Tensor, level: float = 0.05) -> tuple[int, int]:
    rows, cols = torch.nonzero(t > level, as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def centre_of_mass(t: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return float((ys * t).sum() / t.sum()), float((xs * t).sum() / t.sum())


def reference(shape: str) -> torch.Tensor:
    t, blank = to_mnist(draw(shape, (300, 200)))
    assert not blank
    return t


# --- decode_image: inputs that must be refused --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not an image at all", "not an image"),
        (b"", "empty file"),
        (encode(draw("7", (300, 200)))[:400], "truncated or corrupt"),
        (png_header(7000, 7000), "image too large"),  # 49 MP: over our limit, under Pillow's
        (png_header(10_000, 10_000), "too large"),  # 100 MP: Pillow's DecompressionBombWarning
        (png_header(100_000, 100_000), "too large"),  # 10 GP: Pillow's DecompressionBombError
    ],
    ids=["not-image", "empty", "truncated", "bomb-49MP", "bomb-100MP", "bomb-10GP"],
)
def test_bad_bytes_are_refused_with_one_line(data: bytes, message: str) -> None:
    with pytest.raises(InputImageError, match=message) as err:
        decode_image(data, name="upload.png")
    assert str(err.value).startswith("upload.png: ") and "\n" not in str(err.value)


def test_bad_files_name_the_path(tmp_path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputImageError, match=r"empty\.png: empty file"):
        decode_image(empty)
    with pytest.raises(InputImageError, match=r"missing\.png: cannot read file"):
        decode_image(str(tmp_path / "missing.png"))
    assert MAX_PIXELS < 7000 * 7000


def animated(fmt: str) -> bytes:
    frames = [draw("7", (40, 40)), draw("1", (40, 40))]
    if fmt != "GIF":
        frames = [f.convert("RGB") for f in frames]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    with pytest.raises(InputImageError, match="animated.*2 frames.*single frame"):
        decode_image(animated(fmt), name="anim")


def test_single_frame_gif_is_accepted() -> None:
    img = decode_image(encode(draw("7", (60, 40)).convert("P"), "GIF"))
    assert img.mode == "L" and not to_mnist(img)[1]


# --- decode_image: unusual but valid inputs -----------------------------------------------------------------


def test_16bit_png_is_scaled_not_clipped() -> None:
    a = np.full((40, 60), 65535, np.uint16)
    a[10:30, 25:30] = 0  # dark ink
    a[0, 0] = 32896  # mid gray: 32896 / 257 = 128
    data = encode(Image.fromarray(a))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_image(data))
    assert out[5, 5] == 255 and out[20, 27] == 0 and out[0, 0] == 128
    t, blank = to_mnist(decode_image(data))
    assert not blank and ink_box(t)[0] == 20


def test_palette_cmyk_1bit_and_jpeg_images_match_grayscale() -> None:
    ref = reference("7")
    base = draw("7", (300, 200))
    noise = np.random.default_rng(0).normal(0, 8, (200, 300))
    photo = np.clip(np.asarray(base) * 0.7 + 50 + noise, 0, 255)  # gray paper, grain, weak contrast
    variants = {
        "palette": encode(base.convert("P")),
        "palette-gif": encode(base.convert("P"), "GIF"),
        "cmyk-jpeg": encode(base.convert("CMYK"), "JPEG", quality=95),
        "1-bit": encode(base.convert("1")),
        "rgb-jpeg": encode(base.convert("RGB"), "JPEG", quality=90),
        "noisy-photo": encode(Image.fromarray(photo.astype(np.uint8)), "JPEG", quality=70),
    }
    for name, data in variants.items():
        t, blank = to_mnist(decode_image(data, name=name))
        assert not blank and cosine(t, ref) > 0.95, name


@pytest.mark.parametrize("ink", [0, 255], ids=["black-ink", "white-ink"])
@pytest.mark.parametrize("hidden", [0, 255], ids=["black-under-alpha", "white-under-alpha"])
def test_ink_on_transparent_background(ink: int, hidden: int) -> None:
    """Only alpha tells ink from background; the colour of the transparent pixels must not matter."""
    alpha = draw("7", (300, 200), ink=255, paper=0)
    rgba = Image.new("RGBA", alpha.size, (hidden, hidden, hidden, 0))
    rgba.paste(Image.new("RGBA", alpha.size, (ink, ink, ink, 255)), mask=alpha)
    t, blank = to_mnist(decode_image(encode(rgba)))
    assert not blank and cosine(t, reference("7")) > 0.95
    la = decode_image(encode(rgba.convert("LA")))  # the same through mode LA
    assert cosine(to_mnist(la)[0], reference("7")) > 0.95


def test_opaque_sheet_with_transparent_margin_keeps_the_sheet_colour() -> None:
    sheet = draw("7", (300, 200)).convert("RGBA")
    rgba = Image.new("RGBA", (360, 260), (0, 0, 0, 0))
    rgba.paste(sheet, (30, 30))
    gray = decode_image(encode(rgba))
    assert gray.getpixel((0, 0)) == 255  # the margin became paper, not a black frame
    assert cosine(to_mnist(gray)[0], reference("7")) > 0.95


def test_exif_orientation_is_applied() -> None:
    img = draw("1", (200, 300)).transpose(Image.Transpose.ROTATE_90)  # stored sideways: a horizontal bar
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img.convert("RGB"), "JPEG", exif=exif))
    assert out.size == (200, 300)
    h, w = ink_box(to_mnist(out)[0])
    assert h == 20 and w < 8


@pytest.mark.parametrize(
    "img",
    [
        Image.new("L", (1, 1), 0),
        Image.new("RGB", (1, 1), (255, 255, 255)),
        Image.new("L", (300, 200), 255),
        Image.new("L", (300, 200), 0),
        Image.new("RGBA", (50, 50), (0, 0, 0, 0)),
        Image.effect_noise((100, 100), 3).point(lambda v: 240 + v // 20),  # faint paper texture
    ],
    ids=["1x1-black", "1x1-white", "blank-white", "blank-black", "transparent", "faint-noise"],
)
def test_blank_images_are_reported_blank(img: Image.Image) -> None:
    t, blank = to_mnist(decode_image(encode(img)))
    assert blank and t.shape == (28, 28) and t.dtype == torch.float32 and not t.any()


# --- geometry ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_geometry_matches_mnist(shape: str) -> None:
    big, _ = to_mnist(draw(shape, (300, 200)))  # black on white, large, off-centre
    small, blank = to_mnist(draw(shape, (28, 28), ink=255, paper=0))  # white on black, already small
    assert not blank
    for t in (big, small):
        assert t.shape == (28, 28) and t.dtype == torch.float32
        assert 0.0 <= float(t.min()) and float(t.max()) == pytest.approx(1.0)
        assert float(t[0].max()) == 0.0 and float(t[:, 0].max()) == 0.0  # white ink on a black frame
        h, w = ink_box(t)
        assert max(h, w) in (19, 20, 21) and min(h, w) <= 20
        cy, cx = centre_of_mass(t)
        assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert cosine(big, small) > 0.8


def test_a_one_stays_narrow() -> None:
    for img in (draw("1", (300, 200)), draw("1", (28, 28), ink=255, paper=0), Image.new("L", (5, 400), 0)):
        if img.width == 5:
            ImageDraw.Draw(img).line([(2, 0), (2, 399)], fill=255, width=1)  # a hairline, 1 px wide
        t, blank = to_mnist(img)
        h, w = ink_box(t)
        assert not blank and h >= 19 and w <= 8, (h, w)


def mnist_like_samples(n: int = 64) -> torch.Tensor:
    """Real MNIST test digits if already on disk (never downloaded here), else synthetic digits processed once."""
    try:
        from mnistlab.data import dataset_dir, get_spec, load_split

        if all((dataset_dir("mnist") / f.name).exists() for f in get_spec("mnist").split_files("test")):
            return load_split("mnist", "test")[0][:n].float() / 255.0
    except Exception:  # no data module or unreadable data: fall back to synthetic digits
        pass
    sizes = [(300, 200), (90, 120), (28, 28), (64, 40)]
    return torch.stack([to_mnist(draw(s, size))[0] for s in SHAPES for size in sizes])


def test_mnist_digits_pass_through_nearly_unchanged() -> None:
    """MNIST digits are already size-normalised and centred: re-processing one barely changes it."""
    sims = []
    for d in mnist_like_samples():
        t, blank = to_mnist(Image.fromarray(d.numpy(), "F"))
        assert not blank
        sims.append(cosine(t, d))
    assert min(sims) > 0.9 and float(np.median(sims)) > 0.99


# --- from_pixels and prepare_batch --------------------------------------------------------------------------


def test_from_pixels_uses_the_same_pipeline_for_both_polarities() -> None:
    white_on_black = np.asarray(draw("7", (28, 28), ink=255, paper=0), dtype=np.float64) / 255
    t1, b1 = from_pixels(white_on_black.tolist())
    t2, b2 = from_pixels(1.0 - white_on_black)
    ref, _ = to_mnist(draw("7", (28, 28), ink=255, paper=0))
    assert not b1 and not b2 and torch.allclose(t1, ref) and cosine(t2, ref) > 0.95
    assert from_pixels(np.zeros((28, 28)))[1] and from_pixels(np.ones((28, 28)))[1]


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((27, 28)), "expected shape 28x28, got 27x28"),
        (np.zeros((28, 28, 1)), "expected shape 28x28"),
        (5, "expected shape 28x28, got a scalar"),
        ([[0.0] * 28] * 27 + [[0.0] * 27], "28x28 array of numbers"),
        ([["a"] * 28] * 28, "28x28 array of numbers"),
        (np.full((28, 28), np.nan), "finite"),
        (np.full((28, 28), 2.0), r"in \[0, 1\]"),
        (np.full((28, 28), -0.5), r"in \[0, 1\]"),
    ],
    ids=["short", "3d", "scalar", "ragged", "strings", "nan", "above-1", "negative"],
)
def test_from_pixels_refuses_bad_input(pixels, message: str) -> None:
    with pytest.raises(InputImageError, match=message):
        from_pixels(pixels)


def test_prepare_batch_normalises() -> None:
    t = [torch.zeros(28, 28), torch.ones(28, 28)]
    assert torch.equal(prepare_batch(t, None), torch.stack(t).unsqueeze(1))
    x = prepare_batch(t, (0.1307, 0.3081))
    assert x.shape == (2, 1, 28, 28)
    assert float(x[0].max()) == pytest.approx(-0.1307 / 0.3081) and float(x[1].min()) == pytest.approx(
        0.8693 / 0.3081
    )
    assert prepare_batch([], (0.5, 0.5)).shape == (0, 1, 28, 28)


def test_unsupported_mode_is_refused() -> None:
    with pytest.raises(InputImageError, match="unsupported image mode La"):
        to_mnist(Image.new("La", (8, 8)))
