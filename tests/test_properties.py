"""Property tests of the image path: whatever bytes or pixel values arrive, the preprocessing
either gives a (28, 28) uint8 digit or raises `InputError` with a 4xx status, nothing else.

Strategies: images of every Pillow mode a client can send (1, L, P, RGB, RGBA, LA, I;16, I,
F, CMYK and a few rarer ones), 1x1 up to 300x300 with any content (noise, constants, strokes,
NaN and infinite floats, negative integers), encoded as PNG, JPEG, BMP, GIF, TIFF or WebP as
the mode allows; images exactly at, under and over a (low) pixel limit; random bytes, bytes
behind real format signatures, truncated and bit-flipped encodings, and PNGs rebuilt chunk by
chunk with lying lengths, wrong CRCs and odd headers. And `pixels_to_array` on any JSON value.
"""

from __future__ import annotations

import contextlib
import io
import math
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from PIL import Image, ImageDraw

from service.errors import InputError
from service.pixels import pixels_to_array
from service.upload import image_to_mnist, preprocess_upload

# The service's default pixel limit; the near-limit properties use their own low limits.
MAX_PIXELS = 40_000_000
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK")
# Modes clients rarely send but Pillow decodes (TIFF, WebP); only fed in memory or as TIFF.
RARE_MODES = ("PA", "I;16B", "YCbCr", "LAB", "La", "RGBa", "HSV")

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _can_save(mode: str, fmt: str) -> bool:
    try:
        Image.new(mode, (3, 2)).save(io.BytesIO(), fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


# Asked of the installed Pillow rather than hard-coded: which formats each mode can be saved as.
ENCODABLE = {mode: [f for f in FORMATS if _can_save(mode, f)] for mode in MODES + RARE_MODES}


def test_every_mode_is_encodable_in_some_format() -> None:
    assert all(ENCODABLE[mode] for mode in MODES), ENCODABLE
    for mode, fmt in [("L", "PNG"), ("RGB", "JPEG"), ("F", "TIFF"), ("CMYK", "JPEG")]:
        assert fmt in ENCODABLE[mode]


# --------------------------------------------------------------------------- the property


def check_upload(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray | InputError:
    """Run preprocess_upload and check the contract; returns the digit or the InputError."""
    with warnings.catch_warnings():
        # Pillow warns about odd EXIF, palettes, truncated metadata: warnings, not failures.
        warnings.simplefilter("ignore")
        try:
            out = preprocess_upload(data, max_pixels)
        except InputError as exc:
            assert 400 <= exc.status_code < 500, exc
            assert isinstance(exc.message, str) and exc.message
            count_event(f"InputError {exc.status_code}: {exc.message.split(':')[0][:30]}")
            return exc
    check_digit(out)
    count_event("digit")
    return out


def count_event(label: str) -> None:
    """Count outcomes in --hypothesis-show-statistics (a no-op outside a Hypothesis test)."""
    with contextlib.suppress(InvalidArgument):
        event(label)


def check_digit(out: object) -> None:
    assert isinstance(out, np.ndarray)
    assert out.shape == (28, 28)
    assert out.dtype == np.uint8  # so finite and within 0-255 by construction


# --------------------------------------------------------------------------- image strategies


def _intensity(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A float array in [0, 1]: 1 = ink (before the polarity and colours are chosen)."""
    if kind == "noise":
        return rng.random((height, width))
    if kind == "constant":
        return np.full((height, width), rng.random())
    # A hand-drawn-ish digit: a few thick strokes and arcs, on an optional lighting gradient.
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 5))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        stroke = max(1, int(min(width, height) * rng.uniform(0.01, 0.15)))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=255, width=stroke)
        else:
            draw.arc((x0, y0, x1, y1), int(rng.integers(0, 360)), 360, fill=255, width=stroke)
    ink = np.asarray(canvas, dtype=np.float64) / 255.0
    if kind == "gradient":
        ys, xs = np.mgrid[0:height, 0:width]
        ink = 0.7 * ink + 0.3 * (xs + ys) / max(width + height - 2, 1)
    if kind == "noisy":
        ink = ink + rng.normal(0, 0.1, ink.shape)
    return np.clip(ink, 0.0, 1.0)


def _to_mode(ink: np.ndarray, mode: str, rng: np.random.Generator) -> Image.Image:
    """Turn [0, 1] ink into an image of `mode`, with random polarity, colours and ranges."""
    height, width = ink.shape
    if rng.random() < 0.5:
        ink = 1.0 - ink  # dark ink on light paper, as photos are
    grey = (ink * 255).astype(np.uint8)
    if mode == "1":
        return Image.fromarray(ink > 0.5)
    if mode == "L":
        return Image.fromarray(grey)
    if mode == "P":
        img = Image.frombytes("P", (width, height), grey.tobytes())
        palette = rng.integers(0, 256, 768) if rng.random() < 0.5 else np.repeat(np.arange(256), 3)
        img.putpalette(palette.astype(np.uint8).tobytes())
        if rng.random() < 0.3:
            img.info["transparency"] = int(rng.integers(0, 256))
        return img
    if mode in ("RGB", "RGBA", "CMYK"):
        channels = 4 if mode == "CMYK" else 3
        paper, pen = rng.integers(0, 256, channels), rng.integers(0, 256, channels)
        pixels = paper * (1 - ink[..., None]) + pen * ink[..., None]
        pixels = pixels.astype(np.uint8)
        if mode == "RGBA":
            alpha = _alpha(ink, rng)
            pixels = np.dstack([pixels, alpha])
        return Image.frombytes(mode, (width, height), np.ascontiguousarray(pixels).tobytes())
    if mode == "LA":
        pixels = np.dstack([grey, _alpha(ink, rng)])
        return Image.frombytes("LA", (width, height), np.ascontiguousarray(pixels).tobytes())
    if mode == "I;16":
        top = int(rng.choice([1, 255, 4095, 65535]))
        return Image.frombytes("I;16", (width, height), (ink * top).astype("<u2").tobytes())
    if mode == "I":
        scale = float(rng.choice([1, 255, 65535, 1e6, 2e9]))
        offset = float(rng.choice([0, -1000, -2e9, 1e5]))
        values = np.clip(ink * scale + offset, -(2**31), 2**31 - 1).astype(np.int32)
        return Image.frombytes("I", (width, height), values.astype("<i4").tobytes())
    if mode == "F":
        scale = float(rng.choice([1.0, 255.0, 65535.0, 1e6, 1e30, -1.0]))
        offset = float(rng.choice([0.0, -0.5, -1e6, 1e30]))
        values = (ink * scale + offset).astype(np.float32)
        if rng.random() < 0.3:  # NaN and infinities where the data had gaps
            holes = rng.random(values.shape) < 0.1
            values[holes] = rng.choice([np.nan, np.inf, -np.inf])
        return Image.frombytes("F", (width, height), values.astype("<f4").tobytes())
    # Rarer modes: build in a common one and let Pillow convert.
    if mode == "LAB":
        return Image.merge("LAB", [Image.fromarray(grey)] * 3)
    if mode in ("YCbCr", "HSV"):
        return Image.fromarray(np.dstack([grey] * 3)).convert(mode)
    if mode == "PA":
        img = Image.frombytes("PA", (width, height), np.dstack([grey, _alpha(ink, rng)]).tobytes())
        img.putpalette(np.repeat(np.arange(256), 3).astype(np.uint8).tobytes())
        return img
    if mode == "I;16B":
        return Image.frombytes("I;16B", (width, height), (ink * 65535).astype(">u2").tobytes())
    if mode == "La":
        return Image.frombytes("La", (width, height), np.dstack([grey, _alpha(ink, rng)]).tobytes())
    if mode == "RGBa":
        rgba = np.dstack([grey, grey, grey, _alpha(ink, rng)])
        return Image.frombytes("RGBa", (width, height), np.ascontiguousarray(rgba).tobytes())
    raise AssertionError(mode)


def _alpha(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    choice = rng.integers(0, 4)
    if choice == 0:
        return np.full(ink.shape, 255, np.uint8)  # opaque
    if choice == 1:
        return (ink * 255).astype(np.uint8)  # canvas export: ink opaque, rest transparent
    if choice == 2:
        return np.zeros(ink.shape, np.uint8)  # fully transparent
    return rng.integers(0, 256, ink.shape).astype(np.uint8)


SIZES = st.one_of(
    st.integers(1, 8),  # degenerate crops
    st.integers(1, 300),
    st.sampled_from([27, 28, 29, 47, 48, 49, 300]),  # around the small-image switch
)


@st.composite
def images(draw: st.DrawFn, modes: tuple[str, ...] = MODES) -> Image.Image:
    mode = draw(st.sampled_from(modes))
    width, height = draw(SIZES), draw(SIZES)
    kind = draw(st.sampled_from(["noise", "constant", "strokes", "gradient", "noisy"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return _to_mode(_intensity(kind, height, width, rng), mode, rng)


def encode(img: Image.Image, fmt: str, options: dict) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


ORIENTATION = 0x0112


@st.composite
def encoded_images(draw: st.DrawFn, modes: tuple[str, ...] = MODES) -> tuple[bytes, Image.Image]:
    """(file bytes, the image before encoding) in a format the image's mode allows."""
    img = draw(images(modes))
    fmt = draw(st.sampled_from(ENCODABLE[img.mode]))
    options: dict = {}
    if fmt == "JPEG":
        options = {"quality": draw(st.integers(1, 95)), "progressive": draw(st.booleans())}
    elif fmt == "WEBP":
        options = {"lossless": draw(st.booleans()), "quality": draw(st.integers(0, 100))}
    elif fmt == "TIFF":
        options = {"compression": draw(st.sampled_from([None, "tiff_lzw", "tiff_adobe_deflate"]))}
    elif fmt == "PNG":
        options = {"optimize": draw(st.booleans())}
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
        exif = Image.Exif()
        exif[ORIENTATION] = draw(st.integers(0, 9))  # 0 and 9 are not valid orientations
        options["exif"] = exif.tobytes()
    try:
        data = encode(img, fmt, options)
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. libtiff refusing a tag
        assume(False)
        raise AssertionError from exc
    return data, img


# --------------------------------------------------------------------------- images, encoded


@settings(SETTINGS, max_examples=300)
@given(encoded_images())
def test_any_encoded_image_gives_a_digit_or_a_4xx(upload: tuple[bytes, Image.Image]) -> None:
    data, _ = upload
    check_upload(data)


@settings(SETTINGS, max_examples=40)
@given(images(MODES + RARE_MODES))
def test_any_decoded_image_gives_a_digit_or_a_4xx(img: Image.Image) -> None:
    # image_to_mnist is the path after decoding; modes no encoder writes are fed in memory.
    try:
        check_digit(image_to_mnist(img))
    except InputError as exc:
        assert 400 <= exc.status_code < 500


@pytest.mark.parametrize("mode", ["F", "I"])
@pytest.mark.parametrize("value", [-1.0, 1e6])
def test_constant_wide_range_image_is_a_4xx(mode: str, value: float) -> None:
    # Found by the properties above: a uniform 32-bit int or float TIFF outside 0-65535 made
    # _high_bit_grey divide by its zero range (HTTP 500). It has no digit: 422.
    img = Image.new(mode, (40, 30), int(value) if mode == "I" else value)
    result = check_upload(encode(img, "TIFF", {}))
    assert isinstance(result, InputError) and result.status_code == 422


def test_float_image_spanning_the_float32_range_gives_a_digit_or_a_4xx() -> None:
    # Found by bench/fuzz_decode.py (atheris): max - min overflowed float32 in _high_bit_grey,
    # and the infinities became NaN that _otsu could not bin (ValueError, HTTP 500).
    pixels = np.zeros((30, 40), np.float32)
    pixels[10:20, 25:28] = 3e38  # a stroke at the top of the range
    pixels[0, 0] = -3e38  # and one pixel at the bottom: max - min overflows float32
    with np.errstate(all="ignore"):
        check_upload(encode(Image.fromarray(pixels), "TIFF", {}))


def test_premultiplied_la_image_is_a_4xx() -> None:
    # Found by the properties above: image_to_mnist converted "La" to RGBA, which Pillow
    # cannot do (ValueError). No decoder yields "La"; direct callers of image_to_mnist do.
    img = Image.new("La", (40, 30))
    try:
        check_digit(image_to_mnist(img))
    except InputError as exc:
        assert 400 <= exc.status_code < 500


@st.composite
def near_limit(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """An image and a low pixel limit just under, at or just over its width x height."""
    width, height = draw(st.integers(1, 120)), draw(st.integers(1, 120))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(MODES))
    img = _to_mode(_intensity("strokes", height, width, rng), mode, rng)
    fmt = draw(st.sampled_from(ENCODABLE[mode]))
    limit = width * height + draw(st.sampled_from([-1, 0, 1, -width, width]))
    return encode(img, fmt, {}), max(limit, 1), width * height


@settings(SETTINGS, max_examples=60)
@given(near_limit())
def test_pixel_limit_is_exact(case: tuple[bytes, int, int]) -> None:
    data, limit, pixels = case
    result = check_upload(data, limit)
    if pixels > limit:
        assert isinstance(result, InputError) and result.status_code == 413, result
    else:
        assert not (isinstance(result, InputError) and result.status_code == 413), result


# --------------------------------------------------------------------------- damaged bytes

SIGNATURES = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"\x00\x00\x01\x00",  # ICO
    b"%PDF-1.4",
    b"P5\n2 2\n255\n",  # PGM
]


@settings(SETTINGS, max_examples=150)
@given(st.one_of(st.binary(max_size=4096), st.tuples(st.sampled_from(SIGNATURES), st.binary())))
@example(b"")
@example(b"\x00")
def test_random_bytes_give_a_4xx(data: bytes | tuple[bytes, bytes]) -> None:
    if isinstance(data, tuple):
        data = b"".join(data)
    check_upload(data)


SMALL_MODES = ("L", "RGB", "RGBA", "P", "I;16", "F", "CMYK", "1")


@settings(SETTINGS, max_examples=250)
@given(encoded_images(SMALL_MODES), st.data())
def test_truncated_or_mutated_files_give_a_digit_or_a_4xx(
    upload: tuple[bytes, Image.Image], data: st.DataObject
) -> None:
    raw = bytearray(upload[0])
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "zero-run"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "splice":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i : i + data.draw(st.integers(1, 64))] = b"\x00" * 64
    check_upload(bytes(raw))


# --------------------------------------------------------------------------- PNG chunks


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunks.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def chunk(kind: bytes, body: bytes, length: int | None = None, crc: int | None = None) -> bytes:
    real_crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return (
        struct.pack(">I", len(body) if length is None else length)
        + kind
        + body
        + struct.pack(">I", real_crc if crc is None else crc)
    )


U32 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**32 - 1]))


@st.composite
def lying_pngs(draw: st.DrawFn) -> bytes:
    """A real PNG rebuilt chunk by chunk, with some chunks lying about themselves."""
    img = draw(images(("L", "RGB", "RGBA", "P", "I;16", "1", "LA")))
    chunks = png_chunks(encode(img, "PNG", {}))
    if draw(st.booleans()):  # split IDAT in several chunks, as large PNGs are
        kind, body = next((k, b) for k, b in chunks if k == b"IDAT")
        cut = draw(st.integers(0, len(body)))
        i = chunks.index((kind, body))
        chunks[i : i + 1] = [(b"IDAT", body[:cut]), (b"IDAT", body[cut:])]
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        lie = draw(
            st.sampled_from(["none"] * 4 + ["length", "crc", "drop", "twice", "body", "ihdr"])
        )
        if lie == "length":
            out.append(chunk(kind, body, length=draw(U32)))
        elif lie == "crc":
            out.append(chunk(kind, body, crc=draw(U32)))
        elif lie == "drop":
            continue
        elif lie == "twice":
            out += [chunk(kind, body)] * 2
        elif lie == "body":
            out.append(chunk(kind, draw(st.binary(max_size=64))))
        elif lie == "ihdr" and kind == b"IHDR":
            width, height = draw(U32), draw(U32)
            depth = draw(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32]))
            colour = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]))
            tail = draw(st.binary(min_size=3, max_size=3))
            out.append(chunk(kind, struct.pack(">IIBB", width, height, depth, colour) + tail))
        else:
            out.append(chunk(kind, body))
        if draw(st.integers(0, 9)) == 0:  # an unknown chunk, ancillary or critical
            name = draw(st.sampled_from([b"tEXt", b"zTXt", b"iCCP", b"eXIf", b"aBcD", b"ABCD"]))
            out.append(chunk(name, draw(st.binary(max_size=128))))
    return b"".join(out)


@settings(SETTINGS, max_examples=200)
@given(lying_pngs())
def test_png_with_lying_chunks_gives_a_digit_or_a_4xx(data: bytes) -> None:
    check_upload(data)


@pytest.mark.parametrize(("width", "height"), [(0, 0), (2**31 - 1, 2**31 - 1), (100_000, 100_000)])
def test_png_header_claiming_a_huge_or_empty_image_is_refused_before_decoding(
    width: int, height: int
) -> None:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    result = check_upload(data, 1_000_000)
    assert isinstance(result, InputError)
    if width * height > 1_000_000:
        assert result.status_code == 413


# --------------------------------------------------------------------------- JSON pixels

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-1, 300),
    st.floats(),  # NaN and the infinities included
    st.floats(0, 255),
    st.text(max_size=5),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=40,
)
# Mostly valid grey levels, so the shapes below are often right and only a value is wrong.
GREY = st.one_of(st.integers(0, 255), st.floats(0, 255), JSON_LEAVES)


@st.composite
def pixel_arrays(draw: st.DrawFn) -> object:
    """Nearly the right shape: 784 values or 28 rows of 28, with some rows or values off."""
    if draw(st.booleans()):
        n = draw(st.sampled_from([784, 784, 783, 785, 0]))
        value = draw(GREY)
        values = [value] * n
        for _ in range(draw(st.integers(0, 3))):
            if values:
                values[draw(st.integers(0, len(values) - 1))] = draw(JSON_VALUES)
        return values
    rows = []
    for _ in range(draw(st.sampled_from([28, 28, 27, 29]))):
        length = draw(st.sampled_from([28] * 8 + [27, 29, 0]))
        rows.append([draw(GREY)] * length)
    if rows and draw(st.booleans()):
        rows[draw(st.integers(0, len(rows) - 1))] = draw(JSON_VALUES)
    return rows


def check_pixels(value: object, normalize: bool) -> None:
    try:
        out = pixels_to_array(value, normalize)
    except InputError as exc:
        assert 400 <= exc.status_code < 500, exc
        return
    assert isinstance(out, np.ndarray) and out.shape == (28, 28) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 255
    if not normalize:  # taken as sent
        sent = np.asarray(value, dtype=np.float64).astype(np.float32).reshape(28, 28)
        assert np.array_equal(out, sent)


@settings(SETTINGS, max_examples=150)
@given(st.one_of(JSON_VALUES, pixel_arrays()), st.booleans())
def test_pixels_to_array_on_any_json(value: object, normalize: bool) -> None:
    check_pixels(value, normalize)


@settings(SETTINGS, max_examples=60)
@given(
    st.lists(st.lists(st.floats(0, 255), min_size=28, max_size=28), min_size=28, max_size=28),
    st.booleans(),
)
def test_valid_pixel_arrays_are_accepted_as_sent(rows: list[list[float]], normalize: bool) -> None:
    try:
        out = pixels_to_array(rows, normalize)
    except InputError as exc:
        # With normalize the upload pipeline may find no digit in a blank or uniform array.
        assert normalize and exc.status_code == 422, exc
        return
    assert out.shape == (28, 28)
    if not normalize:
        flat = [v for row in rows for v in row]
        assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(out.ravel(), flat, strict=True))
