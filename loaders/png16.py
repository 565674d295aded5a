"""A small PNG decoder for what Pillow reads lossily: 16-bit colour PNGs.

Pillow (13.0 here) decodes 16-bit RGB, RGBA and grey+alpha PNGs to 8 bits per
channel (it keeps the high byte), so a 16-bit dataset would silently lose its
low byte. This decoder handles non-interlaced PNGs of bit depth 8 or 16 and
colour types 0 (grey), 2 (RGB), 4 (grey + alpha), 6 (RGBA); ``read_image`` uses
it for 16-bit colour files only and Pillow for everything else.

Unfiltering (PNG spec, section 9) is sequential along rows and down columns, so
it is done as a wavefront over anti-diagonals x + y = d: every pixel on one
diagonal depends only on the previous two, giving H + W - 1 vectorised steps
instead of H * W scalar ones.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def png_header(path: str):
    """(width, height, bit_depth, colour_type, interlace) of a PNG file, or None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != SIGNATURE or head[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return w, h, depth, ctype, interlace


def is_16bit_colour_png(path: str) -> bool:
    hdr = png_header(path)
    return hdr is not None and hdr[2] == 16 and hdr[3] in (2, 4, 6)


def _chunks(data: bytes):
    pos = len(SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ValueError("file ends inside a chunk header (truncated, no IEND)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc = data[pos + 8 + length:pos + 12 + length]
        if len(body) < length or len(crc) < 4:
            raise ValueError(f"file ends inside the {kind.decode('latin-1')} chunk (truncated)")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", crc)[0]:
            raise ValueError(f"CRC mismatch in the {kind.decode('latin-1')} chunk (corrupt)")
        yield kind, body
        if kind == b"IEND":
            return
        pos += 12 + length


def unfilter(filtered: np.ndarray, filters: np.ndarray, bpp: int) -> np.ndarray:
    """Reverse PNG filtering. filtered uint8 (H, W, bpp) bytes per pixel, filters (H,)
    in 0..4 -> reconstructed uint8 (H, W, bpp)."""
    h, w, _ = filtered.shape
    if filters.size and filters.max() > 4:
        raise ValueError(f"unknown PNG filter type {int(filters.max())}")
    rec = np.zeros((h + 1, w + 1, bpp), np.int32)  # a zero row above and a zero column left
    raw = filtered.astype(np.int32)
    ft = filters.astype(np.int32)
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h, d + 1))
        xs = d - ys
        a, b, c = rec[ys + 1, xs], rec[ys, xs + 1], rec[ys, xs]  # left, up, up-left
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        f = ft[ys][:, None]
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) // 2, paeth], 0)
        rec[ys + 1, xs + 1] = (raw[ys, xs] + pred) & 0xFF
    return rec[1:, 1:].astype(np.uint8)


def read_png(path: str) -> np.ndarray:
    """uint8 or uint16 (H, W, C) array, C in {1 -> squeezed to (H, W), 2, 3, 4}.
    ValueError (with the reason) for anything this decoder does not handle or finds corrupt."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != SIGNATURE:
        raise ValueError("not a PNG file")
    ihdr, idat = None, []
    for kind, body in _chunks(data):
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    if ihdr is None:
        raise ValueError("no IHDR chunk")
    w, h, depth, ctype, comp, filt, interlace = ihdr
    if ctype not in CHANNELS or depth not in (8, 16) or comp != 0 or filt != 0:
        raise ValueError(f"unsupported PNG variant (bit depth {depth}, colour type {ctype})")
    if interlace:
        raise ValueError("interlaced (Adam7) 16-bit PNGs are not supported; save it non-interlaced")
    if w == 0 or h == 0:
        raise ValueError("image is empty")
    bpp = CHANNELS[ctype] * depth // 8
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"image data does not decompress ({exc})") from None
    if len(raw) != h * (1 + w * bpp):
        raise ValueError(f"image data has {len(raw)} bytes, expected {h * (1 + w * bpp)} (truncated?)")
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * bpp)
    img = unfilter(rows[:, 1:].reshape(h, w, bpp), rows[:, 0], bpp)
    if depth == 16:
        img = img.reshape(h, w * bpp).view(">u2").astype(np.uint16)
    img = img.reshape(h, w, CHANNELS[ctype])
    return img[..., 0] if img.shape[-1] == 1 else img
