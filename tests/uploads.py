"""Realistic uploads made from real MNIST test digits with Pillow (shared by several tests)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageFilter


def png_header_bomb(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height 8-bit grey pixels (tiny, invalid body)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def paper(digit: np.ndarray, rng: np.random.Generator, size: int | None = None) -> Image.Image:
    """Dark ink on light noisy paper, scaled up and placed off-centre on a larger sheet."""
    side = size or int(rng.integers(60, 300))
    ink = Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)
    sheet_w, sheet_h = side + int(rng.integers(20, 200)), side + int(rng.integers(20, 200))
    background = int(rng.integers(190, 250))
    sheet = np.full((sheet_h, sheet_w), background, dtype=np.float32)
    sheet += rng.normal(0, 4, sheet.shape)
    x, y = int(rng.integers(0, sheet_w - side)), int(rng.integers(0, sheet_h - side))
    region = sheet[y : y + side, x : x + side]
    darkness = (255 - np.asarray(ink, dtype=np.float32)) / 255
    sheet[y : y + side, x : x + side] = region * (1 - darkness) + 30 * darkness
    return Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8)).convert("RGB")


def canvas(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A drawing-canvas export: coloured ink, fully transparent background (RGBA)."""
    side = int(rng.integers(100, 400))
    alpha = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    alpha = alpha.filter(ImageFilter.MaxFilter(3))  # canvas brushes draw thick strokes
    colour = tuple(int(c) for c in rng.integers(0, 120, 3))
    rgba = Image.new("RGBA", (side + 80, side + 80), (255, 255, 255, 0))
    ink = Image.new("RGBA", (side, side), (*colour, 255))
    ink.putalpha(alpha)
    rgba.paste(ink, (int(rng.integers(0, 80)), int(rng.integers(0, 80))), ink)
    return rgba


def product_photo(item: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A Fashion-MNIST item as a shop photo: dark on a light, slightly noisy studio backdrop,
    enlarged and placed off-centre with margins of random sizes (the dataset's source form)."""
    side = int(rng.integers(80, 240))
    dark = Image.fromarray(255 - item).resize((side, side), Image.Resampling.BICUBIC)
    background = int(rng.integers(225, 256))
    top, left = (int(v) for v in rng.integers(10, 120, 2))
    sheet = np.full((side + top + int(rng.integers(10, 120)), side + left + 40), 255.0)
    sheet[top : top + side, left : left + side] = np.asarray(dark, dtype=np.float32)
    sheet = sheet * (background / 255) + rng.normal(0, 2, sheet.shape)
    return Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8)).convert("RGB")
