"""The image preprocessing every input path shares: decoding, upload normalisation, JSON pixels.

Images are real encoded bytes made with Pillow from real MNIST test digits, in every mode and
format the service accepts; the last test measures accuracy on realistic uploads end to end.
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from service.errors import InputError
from service.pixels import pixel_batch_to_array, pixels_to_array, to_model_input
from service.upload import (
    _png_grey,
    as_mnist_digit,
    decode_image,
    image_to_mnist,
    open_upload,
    preprocess_upload,
    to_grey,
)
from tests.uploads import png_header_bomb
from training.models import normalize

REPO_ROOT = Path(__file__).resolve().parent.parent
LIMIT = 10_000_000


# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def ink_cover(
    digit: np.ndarray,
    size: int = 120,
    canvas: tuple[int, int] = (200, 160),
    at: tuple[int, int] = (10, 25),
) -> np.ndarray:
    """Ink coverage 0..1 of an MNIST digit scaled so its 20 px box is `size` px, placed with
    the 28x28 field's top-left corner at `at` on an empty canvas."""
    side = round(28 * size / 20)
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    out = np.zeros(canvas, dtype=np.float32)
    (y, x), visible = at, np.clip(big / 255.0, 0, 1)
    out[y : y + side, x : x + side] = visible[: canvas[0] - y, : canvas[1] - x]
    return out


def paper(cover: np.ndarray) -> np.ndarray:
    """Dark ink (30) on light paper (235) as uint8 grey."""
    return np.round(235 - 205 * cover).astype(np.uint8)


def com_and_box(out: np.ndarray) -> tuple[float, float, int]:
    ys, xs = np.indices(out.shape)
    mass = out.astype(np.float64).sum()
    rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
    long_side = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return (ys * out).sum() / mass, (xs * out).sum() / mass, int(long_side)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two 28x28 images (1 = same picture), best over 1 px shifts:
    centring by mass rounds to whole pixels, so equal digits may sit one pixel apart."""
    a, b = a.astype(float), b.astype(float).ravel()
    return max(
        float(np.corrcoef(np.roll(a, (dy, dx), (0, 1)).ravel(), b)[0, 1])
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


def assert_mnist_like(out: np.ndarray) -> None:
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out.max() == 255 and out[0].max() == 0 and out[:, 0].max() == 0  # empty border
    cy, cx, long_side = com_and_box(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1
    assert 19 <= long_side <= 21


@pytest.fixture(scope="module")
def seven(mnist_test: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    images, labels = mnist_test
    assert labels[0] == 7
    return images[0]


@pytest.fixture(scope="module")
def reference(seven: np.ndarray) -> np.ndarray:
    """The pipeline's output for a plain grey PNG of the digit: what every variant should match."""
    return preprocess_upload(encode(Image.fromarray(paper(ink_cover(seven))), "PNG"), LIMIT)


# --------------------------------------------------------------------------- modes and formats


def make_mode(grey: np.ndarray, mode: str) -> Image.Image:
    """The dark-on-light digit in `mode`, with the mode's natural value range."""
    img = Image.fromarray(grey)
    if mode == "I;16":
        return Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255.0)  # float 0-1
    if mode == "1":
        return img.point(lambda v: 255 if v > 128 else 0).convert("1")
    if mode == "P":
        return img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    if mode in ("RGBA", "LA"):
        return img.convert(mode)  # fully opaque
    return img.convert(mode)


MODE_FORMATS = [
    ("1", "PNG"),
    ("1", "BMP"),
    ("1", "TIFF"),
    ("L", "PNG"),
    ("L", "JPEG"),
    ("L", "BMP"),
    ("L", "GIF"),
    ("L", "WEBP"),
    ("L", "TIFF"),
    ("P", "PNG"),
    ("P", "GIF"),
    ("P", "BMP"),
    ("RGB", "PNG"),
    ("RGB", "JPEG"),
    ("RGB", "BMP"),
    ("RGB", "WEBP"),
    ("RGB", "TIFF"),
    ("RGBA", "PNG"),
    ("RGBA", "WEBP"),
    ("RGBA", "TIFF"),
    ("LA", "PNG"),
    ("CMYK", "JPEG"),
    ("CMYK", "TIFF"),
    ("I;16", "PNG"),
    ("I;16", "TIFF"),
    ("I", "TIFF"),
    ("F", "TIFF"),
]


@pytest.mark.parametrize(("mode", "fmt"), MODE_FORMATS)
def test_every_mode_and_format_gives_the_same_digit(
    seven: np.ndarray, reference: np.ndarray, mode: str, fmt: str
) -> None:
    data = encode(make_mode(paper(ink_cover(seven)), mode), fmt)
    out = preprocess_upload(data, LIMIT)
    assert_mnist_like(out)
    assert similarity(out, reference) > 0.9


def test_decode_image_returns_a_loaded_first_frame(seven: np.ndarray) -> None:
    frames = [Image.fromarray(paper(ink_cover(seven))), Image.new("L", (160, 200), 128)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img = decode_image(data, LIMIT)
    assert img.size == (160, 200)
    assert np.asarray(img.convert("L")).min() < 60  # the digit's frame, not the grey one
    assert_mnist_like(image_to_mnist(img))


def test_multipage_tiff_uses_the_first_page(seven: np.ndarray, reference: np.ndarray) -> None:
    pages = [Image.fromarray(paper(ink_cover(seven))), Image.new("L", (160, 200), 0)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert similarity(preprocess_upload(data, LIMIT), reference) > 0.95


def test_exif_orientation_is_applied(seven: np.ndarray, reference: np.ndarray) -> None:
    # A phone stores the pixels upside down and says so in EXIF; 180 degrees is tag value 3.
    upside_down = Image.fromarray(paper(ink_cover(seven))).rotate(180)
    exif = Image.Exif()
    exif[0x0112] = 3
    data = encode(upside_down, "JPEG", exif=exif.tobytes(), quality=95)
    assert similarity(preprocess_upload(data, LIMIT), reference) > 0.9


# --------------------------------------------------------------------------- geometry, polarity


@pytest.mark.parametrize(
    ("size", "canvas"), [(24, (60, 70)), (60, (300, 110)), (150, (250, 400)), (400, (620, 900))]
)
def test_any_size_and_position_is_scaled_to_20px_and_centred(
    seven: np.ndarray, size: int, canvas: tuple[int, int]
) -> None:
    assert_mnist_like(
        preprocess_upload(
            encode(Image.fromarray(paper(ink_cover(seven, size, canvas))), "PNG"), LIMIT
        )
    )


def test_polarity_dark_on_light_equals_light_on_dark(seven: np.ndarray) -> None:
    cover = ink_cover(seven)
    dark_on_light = preprocess_upload(encode(Image.fromarray(paper(cover)), "PNG"), LIMIT)
    light_on_dark = preprocess_upload(encode(Image.fromarray(255 - paper(cover)), "PNG"), LIMIT)
    assert np.abs(dark_on_light.astype(int) - light_on_dark).mean() < 3
    assert similarity(dark_on_light, light_on_dark) > 0.98


def test_uneven_lighting_and_noise_are_removed(seven: np.ndarray, reference: np.ndarray) -> None:
    cover = ink_cover(seven)
    rng = np.random.default_rng(0)
    light = np.linspace(0.55, 1.0, cover.shape[1])[None, :]  # a strong shadow on the left
    photo = (235 - 205 * cover) * light + rng.normal(0, 6, cover.shape)
    data = encode(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), "JPEG", quality=70)
    out = preprocess_upload(data, LIMIT)
    assert_mnist_like(out)
    assert similarity(out, reference) > 0.9


def test_specks_far_from_the_digit_are_ignored(seven: np.ndarray, reference: np.ndarray) -> None:
    grey = paper(ink_cover(seven, 120, (260, 260)))
    grey[240:243, 240:243] = 0  # dust in the corner
    grey[5, 250] = 0
    out = preprocess_upload(encode(Image.fromarray(grey), "PNG"), LIMIT)
    assert similarity(out, reference) > 0.95


def test_mnist_form_images_are_used_as_sent(mnist_test: tuple[np.ndarray, ...]) -> None:
    images = mnist_test[0][:300]
    outs = np.stack([preprocess_upload(encode(Image.fromarray(im), "PNG"), LIMIT) for im in images])
    same = np.array([np.array_equal(out, im) for out, im in zip(outs, images, strict=True)])
    assert same.mean() >= 0.97  # 98.9% of the test set is in MNIST form (step 0)
    for out, im in zip(outs[~same], images[~same], strict=True):  # through the pipeline
        assert similarity(out, im) > 0.9


def test_step_0_says_the_same_for_uint8_and_float_pixels(mnist_test: tuple) -> None:
    # uint8 images (every decoded upload) take an OpenCV version of the rule, pixel arrays of
    # other types the numpy one: the same answer for the test set, shifted and faded copies.
    images = mnist_test[0]
    variants = [images, np.roll(images, 1, axis=2), np.roll(images, -1, axis=1), images // 2]
    taken = 0
    for variant in variants:
        for image in variant:
            fast = as_mnist_digit(image)
            general = as_mnist_digit(image.astype(np.float64))
            assert (fast is None) == (general is None)
            taken += fast is not None
    assert taken >= 9_000  # most test digits (and some shifted ones) are in MNIST form


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda im: np.roll(im, 3, axis=1), id="off-centre"),
        pytest.param(lambda im: 255 - im, id="inverted"),
        pytest.param(lambda im: im // 2, id="faint"),
        pytest.param(lambda im: np.pad(im, 2)[2:-2, 4:], id="touching-the-edge"),
        pytest.param(lambda im: np.asarray(Image.fromarray(im).resize((14, 14))), id="smaller-box"),
    ],
)
def test_images_not_in_mnist_form_take_the_pipeline(
    seven: np.ndarray, change: Callable[[np.ndarray], np.ndarray]
) -> None:
    changed = change(seven)
    assert as_mnist_digit(changed) is None
    out = preprocess_upload(encode(Image.fromarray(changed), "PNG"), LIMIT)
    assert_mnist_like(out)
    assert similarity(out, seven) > 0.85  # the smaller box lost detail on the way down


def test_mnist_form_pixel_arrays_take_step_0_too(seven: np.ndarray) -> None:
    as_floats = seven.astype(np.float64).tolist()
    np.testing.assert_array_equal(pixels_to_array(as_floats, normalize_upload=True), seven)


@pytest.mark.parametrize("factor", [0.25, 4.0])
def test_extreme_stroke_widths_are_brought_into_mnist_range(
    seven: np.ndarray, factor: float
) -> None:
    from service.upload import stroke_width

    cover = ink_cover(seven, 200, (320, 320)) > 0.5
    # Thin: a fine pen (edge of the stroke only); thick: a marker (dilated stroke).
    if factor < 1:
        cover = cover & ~np.asarray(Image.fromarray(cover).filter(ImageFilter.MinFilter(9)))
    else:
        cover = np.asarray(Image.fromarray(cover).filter(ImageFilter.MaxFilter(17)))
    out = preprocess_upload(encode(Image.fromarray(paper(cover.astype(np.float32))), "PNG"), LIMIT)
    assert 1.8 <= stroke_width(out / 255.0) <= 4.6


# --------------------------------------------------------------------------- transparency, 16-bit


@pytest.mark.parametrize(
    ("ink", "hidden"),
    [
        ((0, 0, 0), 0),
        ((0, 0, 0), 255),
        ((200, 30, 40), 0),
        ((255, 230, 0), 255),
        ((255, 255, 255), 0),
    ],
)
def test_transparent_canvas_export(
    seven: np.ndarray, reference: np.ndarray, ink: tuple[int, int, int], hidden: int
) -> None:
    """Ink of any colour drawn on a transparent background (alpha 0, RGB `hidden` there)."""
    cover = ink_cover(seven)
    rgba = np.full((*cover.shape, 4), hidden, dtype=np.uint8)
    rgba[cover > 0, :3] = ink
    rgba[..., 3] = np.round(cover * 255).astype(np.uint8)
    out = preprocess_upload(encode(Image.fromarray(rgba), "PNG"), LIMIT)
    assert_mnist_like(out)
    assert similarity(out, reference) > 0.95


def test_palette_with_transparency(seven: np.ndarray, reference: np.ndarray) -> None:
    cover = ink_cover(seven) > 0.5
    img = Image.fromarray(np.where(cover, 1, 0).astype(np.uint8)).convert("P")
    img.putpalette([0, 0, 0, 20, 20, 20] + [0, 0, 0] * 254)
    img.info["transparency"] = 0  # index 0 (black!) is the transparent background
    out = preprocess_upload(encode(img, "PNG", transparency=0), LIMIT)
    assert similarity(out, reference) > 0.9


@pytest.mark.parametrize(("lo", "hi"), [(0, 65535), (20000, 45000), (0, 255)])
def test_16_bit_images_are_scaled_not_clipped(seven: np.ndarray, lo: int, hi: int) -> None:
    cover = ink_cover(seven)
    grey16 = np.round(hi - (hi - lo) * cover).astype(np.uint16)
    out = preprocess_upload(encode(Image.fromarray(grey16), "PNG"), LIMIT)
    assert_mnist_like(out)


def canvas_rgba(seven: np.ndarray) -> Image.Image:
    """Blue ink on a transparent canvas, half the alpha levels soft."""
    cover = ink_cover(seven)
    rgba = np.zeros((*cover.shape, 4), dtype=np.uint8)
    rgba[..., :3] = (20, 40, 200)
    rgba[..., 3] = np.round(cover * 255).astype(np.uint8)
    return Image.fromarray(rgba)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGB", "L", "1"])
def test_opencv_and_pillow_decode_plain_pngs_alike(seven: np.ndarray, mode: str) -> None:
    """Plain 8-bit PNGs are decoded by OpenCV (faster); its grey levels must match Pillow's."""
    img = canvas_rgba(seven)
    img = img.convert(mode) if mode in ("RGBA", "LA") else Image.fromarray(paper(ink_cover(seven)))
    data = encode(img.convert(mode), "PNG")
    fast = _png_grey(open_upload(data, LIMIT))
    assert fast is not None, "plain PNGs take OpenCV's decoder"
    slow = to_grey(decode_image(data, LIMIT))
    assert fast.shape == slow.shape
    assert np.abs(fast.astype(int) - slow).max() <= 1
    assert (
        np.abs(
            preprocess_upload(data, LIMIT).astype(int) - image_to_mnist(decode_image(data, LIMIT))
        ).max()
        <= 1
    )


@pytest.mark.parametrize("kind", ["palette", "trns", "16-bit-rgb", "exif", "apng", "jpeg"])
def test_other_images_are_left_to_pillow(
    seven: np.ndarray, reference: np.ndarray, kind: str
) -> None:
    grey = paper(ink_cover(seven))
    img = Image.fromarray(grey).convert("RGB")
    if kind == "palette":
        data = encode(img.convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    elif kind == "trns":
        data = encode(img, "PNG", transparency=(235, 235, 235))
    elif kind == "16-bit-rgb":
        ok, buf = cv2.imencode(
            ".png", np.repeat(grey[..., None], 3, axis=2).astype(np.uint16) * 257
        )
        assert ok
        data = buf.tobytes()
    elif kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 1
        data = encode(img, "PNG", exif=exif.tobytes())
    elif kind == "apng":
        data = encode(img, "PNG", save_all=True, append_images=[Image.new("RGB", img.size)])
    else:
        data = encode(img, "JPEG", quality=95)
    assert _png_grey(open_upload(data, LIMIT)) is None
    assert similarity(preprocess_upload(data, LIMIT), reference) > 0.9


def test_premultiplied_alpha_modes(seven: np.ndarray, reference: np.ndarray) -> None:
    """ "La" and "RGBa" exist only in memory (no decoder yields them): direct image_to_mnist."""
    cover = ink_cover(seven)
    la = np.stack([np.zeros_like(cover), cover * 255], axis=-1).astype(np.uint8)
    for mode in ("La", "RGBa"):
        img = Image.fromarray(la).convert("RGBA" if mode == "RGBa" else "LA")
        out = image_to_mnist(img.convert(mode))
        assert similarity(out, reference) > 0.9


# --------------------------------------------------------------------------- rejections


def blank_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1)
    noise = np.clip(rng.normal(128, 30, (200, 200)), 0, 255).astype(np.uint8)
    return {
        "white": Image.new("L", (100, 80), 255),
        "black": Image.new("L", (28, 28), 0),
        "grey-rgb": Image.new("RGB", (300, 200), (120, 130, 140)),
        "transparent": Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
        "gaussian-noise": Image.fromarray(noise),
        "uniform-noise": Image.fromarray(rng.integers(0, 256, (150, 150), dtype=np.uint8)),
        "one-pixel": Image.new("L", (1, 1), 0),
    }


@pytest.mark.parametrize("mode", ["I", "F"])
@pytest.mark.parametrize("value", [-1.0, 1e6])
def test_uniform_wide_range_image_is_no_digit(mode: str, value: float) -> None:
    img = Image.new(mode, (40, 30), int(value) if mode == "I" else value)
    with pytest.raises(InputError) as err:
        preprocess_upload(encode(img, "TIFF"), LIMIT)
    assert err.value.status_code == 422 and "no digit" in err.value.message


@pytest.mark.parametrize("name", list(blank_images()))
def test_no_digit_is_rejected(name: str) -> None:
    data = encode(blank_images()[name], "PNG")
    with pytest.raises(InputError) as err:
        preprocess_upload(data, LIMIT)
    assert err.value.status_code == 422 and "no digit" in err.value.message


def truncated_png() -> bytes:
    data = encode(
        Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64), np.uint8)), "PNG"
    )
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"hello, this is not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image"),
        (truncated_png(), "truncated or corrupt"),
        (encode(Image.new("L", (8, 8)), "PCX"), "not a readable image"),  # not on the allow-list
    ],
    ids=["empty", "text", "png-signature-only", "truncated-png", "pcx"],
)
def test_unreadable_bytes_are_rejected(data: bytes, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        decode_image(data, LIMIT)
    assert err.value.status_code == 422 and fragment in err.value.message


@pytest.mark.parametrize(
    ("data", "max_pixels"),
    [
        (png_header_bomb(100_000, 100_000), LIMIT),  # beyond Pillow's own bomb limit as well
        (png_header_bomb(5_000, 3_000), LIMIT),  # under Pillow's limit, over ours
        (encode(Image.new("L", (4000, 4000), 255), "PNG"), 1_000_000),  # real, sparse, 30 kB
    ],
    ids=["crafted-huge", "crafted-over-limit", "real-sparse"],
)
def test_oversized_images_are_refused_before_decoding(data: bytes, max_pixels: int) -> None:
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        preprocess_upload(data, max_pixels)
    assert time.perf_counter() - start < 0.5  # refused from the header, nothing decoded
    assert err.value.status_code == 413 and "pixels" in err.value.message


def test_size_limit_names_size_and_limit() -> None:
    with pytest.raises(InputError) as err:
        decode_image(encode(Image.new("L", (300, 200), 255), "PNG"), 50_000)
    assert "300x200" in err.value.message and "50,000" in err.value.message


# --------------------------------------------------------------------------- JSON pixels


def grid(value: object = 0) -> list[list[object]]:
    return [[value] * 28 for _ in range(28)]


def with_pixel(value: object, row: int = 3, col: int = 5) -> list[list[object]]:
    rows = grid(0)
    rows[row][col] = value
    return rows


GOOD_PIXELS: list[tuple[str, Callable[[], object], float]] = [
    ("ints", lambda: grid(7), 7.0),
    ("floats", lambda: grid(12.5), 12.5),
    ("flat-784", lambda: [255] * 784, 255.0),
    ("tuples", lambda: tuple(tuple(r) for r in grid(1)), 1.0),
    ("mixed-int-float", lambda: [[0, 0.5] * 14 for _ in range(28)], 0.25),
    ("numpy", lambda: np.full((28, 28), 3, dtype=np.uint8), 3.0),
    ("all-zero", lambda: grid(0), 0.0),
]


@pytest.mark.parametrize(
    ("make", "mean"), [g[1:] for g in GOOD_PIXELS], ids=[g[0] for g in GOOD_PIXELS]
)
def test_pixels_accepted_as_is(make: Callable[[], object], mean: float) -> None:
    arr = pixels_to_array(make())
    assert arr.shape == (28, 28) and arr.dtype == np.float32
    assert arr.mean() == pytest.approx(mean)


BAD_PIXELS: list[tuple[str, object, str]] = [
    ("not-a-list", "0" * 784, "type str"),
    ("none", None, "type NoneType"),
    ("object", {"pixels": []}, "type dict"),
    ("empty", [], "got a list of 0 items"),
    ("27-rows", grid()[:27], "got a list of 27 items"),
    ("785-flat", [0] * 785, "got a list of 785 items"),
    ("short-row", [*grid()[:27], [0] * 27], "row 27 has 27 values"),
    ("rows-not-lists", [0] * 27 + [[0] * 28], "not all rows"),
    ("too-deep", [[[0]] * 28] * 28, "lists"),
    ("string", with_pixel("12"), "strings"),
    ("null", with_pixel(None), "nulls"),
    ("bool", with_pixel(True), "booleans"),
    ("bool-flat", [False] * 784, "booleans"),
    ("nan", with_pixel(float("nan")), "row 3, column 5 is nan"),
    ("inf", with_pixel(float("inf")), "finite"),
    ("negative", with_pixel(-1), "row 3, column 5 is -1"),
    ("too-big", with_pixel(256), "0-255"),
    ("huge-int", with_pixel(10**400), "finite"),
]


@pytest.mark.parametrize(
    ("pixels", "fragment"), [b[1:] for b in BAD_PIXELS], ids=[b[0] for b in BAD_PIXELS]
)
def test_bad_pixels_are_rejected_with_a_precise_message(pixels: object, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        pixels_to_array(pixels)
    assert err.value.status_code == 422
    assert fragment in err.value.message


def test_pixels_can_run_the_upload_pipeline(seven: np.ndarray) -> None:
    # A drawing pad's digit: small, in a corner, not centred.
    small = np.asarray(Image.fromarray(seven).resize((14, 14), Image.Resampling.BILINEAR))
    pad = np.zeros((28, 28))
    pad[:14, 14:] = small
    as_is = pixels_to_array(pad.tolist())
    normalised = pixels_to_array(pad.tolist(), normalize_upload=True)
    assert np.array_equal(as_is, pad.astype(np.float32))
    assert normalised.dtype == np.float32
    assert_mnist_like(normalised.astype(np.uint8))
    assert similarity(normalised, seven) > 0.8


def test_a_uniform_batch_is_checked_in_one_pass(mnist_test: tuple[np.ndarray, ...]) -> None:
    images = mnist_test[0][:16]
    one_by_one = np.stack([pixels_to_array(im.tolist()) for im in images])
    np.testing.assert_array_equal(pixel_batch_to_array([im.tolist() for im in images]), one_by_one)
    flat = [im.ravel().tolist() for im in images]
    np.testing.assert_array_equal(pixel_batch_to_array(flat), one_by_one)


def _spoiled(index: int, change: Callable[[list], object]) -> list:
    batch = [np.full((28, 28), 9).tolist() for _ in range(4)]
    batch[index] = change(batch[index])
    return batch


def _set(value: object) -> Callable[[list], list]:
    def change(image: list) -> list:
        image[3][3] = value
        return image

    return change


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(_spoiled(2, _set(True)), id="boolean"),
        pytest.param(_spoiled(2, _set("7")), id="string"),
        pytest.param(_spoiled(2, _set(None)), id="null"),
        pytest.param(_spoiled(2, _set(256)), id="over-255"),
        pytest.param(_spoiled(2, _set(-1)), id="negative"),
        pytest.param(_spoiled(2, _set(float("nan"))), id="nan"),
        pytest.param(_spoiled(2, _set(10**400)), id="huge-integer"),
        pytest.param(_spoiled(2, lambda im: im[:27]), id="27-rows"),
        pytest.param(_spoiled(2, lambda im: [*im[:27], im[27][:27]]), id="short-row"),
        pytest.param(_spoiled(2, lambda im: [v for row in im for v in row]), id="mixed-layouts"),
        pytest.param(_spoiled(0, lambda im: [v for row in im for v in row]), id="flat-first"),
        pytest.param([], id="empty"),
        pytest.param([[]], id="empty-image"),
        pytest.param([{"pixels": 1}], id="object"),
    ],
)
def test_a_batch_with_anything_wrong_is_left_to_the_per_image_checks(batch: list) -> None:
    assert pixel_batch_to_array(batch) is None


# --------------------------------------------------------------------------- model input


def test_to_model_input_matches_training_normalisation(mnist_test: tuple[np.ndarray, ...]) -> None:
    images = mnist_test[0][:5]
    from_uint8 = to_model_input(images)
    from_float = to_model_input(images.astype(np.float32))
    assert from_uint8.shape == (5, 1, 28, 28) and from_uint8.dtype == torch.float32
    assert torch.allclose(from_uint8, from_float, atol=1e-6)
    assert torch.allclose(from_uint8[:, 0], normalize(torch.from_numpy(images)))
    with pytest.raises(ValueError):
        to_model_input(np.zeros((2, 27, 28)))


# --------------------------------------------------------------------------- accuracy


def realistic_upload(digit: np.ndarray, rng: np.random.Generator, variant: int) -> bytes:
    """A user's upload of `digit`: a photo of paper, a canvas export, or a marker drawing."""
    if variant == 2:  # thick marker strokes: +2 px of stroke width at MNIST scale
        digit = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(3)))
    size = int(rng.integers(40, 250))
    side = round(28 * size / 20)
    canvas = (round(side * rng.uniform(1.0, 1.8)), round(side * rng.uniform(1.0, 1.8)))
    at = (int(rng.integers(0, canvas[0] - side + 1)), int(rng.integers(0, canvas[1] - side + 1)))
    cover = ink_cover(digit, size, canvas, at)
    if variant == 1:  # transparent canvas export, random ink colour
        rgba = np.zeros((*cover.shape, 4), dtype=np.uint8)
        rgba[..., :3] = rng.integers(0, 160, 3)
        rgba[..., 3] = np.round(cover * 255).astype(np.uint8)
        return encode(Image.fromarray(rgba), "PNG")
    level = rng.uniform(170, 250)
    noise = rng.normal(0, rng.uniform(1, 8), cover.shape)
    photo = level - (level - rng.uniform(0, 80)) * cover + noise
    img = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    if variant == 0:  # a colour phone photo, JPEG-compressed
        return encode(img.convert("RGB"), "JPEG", quality=int(rng.integers(60, 95)))
    return encode(img, "PNG")


def test_accuracy_on_realistic_uploads(mnist_test: tuple[np.ndarray, np.ndarray]) -> None:
    from training.checkpoint import load_weights

    model, _ = load_weights(REPO_ROOT / "weights" / "cnn.pt")
    images, labels = mnist_test[0][:300], mnist_test[1][:300]
    rng = np.random.default_rng(4)
    batch = np.stack(
        [preprocess_upload(realistic_upload(im, rng, i % 3), LIMIT) for i, im in enumerate(images)]
    )
    with torch.inference_mode():
        predicted = model(to_model_input(batch)).argmax(1).numpy()
    accuracy = float((predicted == labels).mean())
    assert accuracy >= 0.97, f"accuracy on realistic uploads {accuracy:.3f} < 0.97"


def test_read_only_uint8_input_becomes_a_tensor_without_a_warning() -> None:
    """A v2 binary body arrives as a read-only buffer; torch warns when it would share it."""
    body = np.arange(2 * 28 * 28, dtype=np.uint32).astype(np.uint8).tobytes()
    images = np.frombuffer(body, dtype=np.uint8).reshape(2, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_model_input(images)
    assert torch.equal(tensor, to_model_input(images.copy()))
