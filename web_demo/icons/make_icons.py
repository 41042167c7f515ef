#!/usr/bin/env python3
"""Draw the demo's PWA icons (icon-192.png, icon-512.png, maskable-512.png) with zlib + struct only.

The mark: a rounded teal square with two white "tide" waves. Run it from anywhere;
it writes next to itself. The PNGs are committed, so the build never runs this.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOP = (20, 184, 166)  # teal-500
BOTTOM = (14, 116, 144)  # cyan-700
WHITE = (255, 255, 255)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write_png(path: Path, size: int, pixels: list[bytearray]) -> None:
    raw = b"".join(b"\x00" + bytes(row) for row in pixels)
    png = b"\x89PNG\r\n\x1a\n"
    png += _chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
    png += _chunk(b"IDAT", zlib.compress(raw, 9))
    png += _chunk(b"IEND", b"")
    path.write_bytes(png)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def draw(size: int, *, maskable: bool) -> list[bytearray]:
    ss = 3  # supersampling per axis, for smooth edges
    radius = 0.0 if maskable else 0.22 * size
    inset = 0.0 if maskable else 0.04 * size
    scale = 0.72 if maskable else 1.0  # keep the waves inside the maskable safe zone
    rows = []
    for y in range(size):
        row = bytearray()
        for x in range(size):
            cov_bg = 0
            cov_wave = 0
            for sy in range(ss):
                for sx in range(ss):
                    px = x + (sx + 0.5) / ss
                    py = y + (sy + 0.5) / ss
                    if _inside_rounded(px, py, size, inset, radius):
                        cov_bg += 1
                        if _on_wave(px, py, size, scale):
                            cov_wave += 1
            n = ss * ss
            base = _mix(TOP, BOTTOM, y / size)
            color = _mix(base, WHITE, cov_wave / cov_bg) if cov_bg else base
            row += bytes(color) + bytes([round(255 * cov_bg / n)])
        rows.append(row)
    return rows


def _inside_rounded(px: float, py: float, size: int, inset: float, r: float) -> bool:
    lo, hi = inset, size - inset
    if not (lo <= px <= hi and lo <= py <= hi):
        return False
    cx = min(max(px, lo + r), hi - r)
    cy = min(max(py, lo + r), hi - r)
    return (px - cx) ** 2 + (py - cy) ** 2 <= r * r + 1e-9


def _on_wave(px: float, py: float, size: int, scale: float) -> bool:
    # Two sine strokes, centred, each ~7% of the icon thick.
    u = (px / size - 0.5) / scale + 0.5
    v = (py / size - 0.5) / scale + 0.5
    if not 0.2 <= u <= 0.8:
        return False
    thick = 0.07
    for centre in (0.42, 0.60):
        wave = centre + 0.06 * math.sin((u - 0.2) / 0.6 * 2 * math.pi)
        if abs(v - wave) <= thick / 2:
            return True
    return False


def main() -> None:
    for size in (192, 512):
        write_png(HERE / f"icon-{size}.png", size, draw(size, maskable=False))
    write_png(HERE / "maskable-512.png", 512, draw(512, maskable=True))


if __name__ == "__main__":
    main()
