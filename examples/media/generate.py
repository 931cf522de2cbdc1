#!/usr/bin/env python3
"""Generates the sample media served by `cargo run --example media_server`.

Everything here is computed, so the files are reproducible and free of any
licence. Run from anywhere:

    python3 examples/media/generate.py

Standard library only. The output is byte-for-byte deterministic (no
timestamps are embedded), so re-running it leaves `git status` clean.
"""

import math
import os
import struct
import wave
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def png(path, width=256, height=256):
    """An RGB gradient, 8 bits per channel, no interlace. Rows use PNG's
    `Sub` filter (each byte minus the one 3 to its left), which turns a
    gradient into long runs that zlib packs into a few KB."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = bytearray()
    for y in range(height):
        raw = bytearray()
        for x in range(width):
            r = x * 255 // (width - 1)
            g = y * 255 // (height - 1)
            b = 255 - (x + y) * 255 // (width + height - 2)
            raw += bytes((r, g, b))
        rows.append(1)  # filter type: Sub
        rows += bytes((raw[i] - (raw[i - 3] if i >= 3 else 0)) % 256 for i in range(len(raw)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )
    with open(path, "wb") as f:
        f.write(data)


def wav(path, seconds=1.0, rate=8000, freq=440.0):
    """A mono 16-bit sine tone with a short fade in and out (no clicks)."""
    frames = int(seconds * rate)
    fade = rate // 50
    samples = bytearray()
    for i in range(frames):
        envelope = min(1.0, i / fade, (frames - 1 - i) / fade)
        value = int(0.5 * 32767 * envelope * math.sin(2 * math.pi * freq * i / rate))
        samples += struct.pack("<h", value)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))


def y4m(path, width=32, height=24, fps=12, seconds=2):
    """A YUV4MPEG2 video (uncompressed 4:2:0, what ffmpeg/mpv read as
    `.y4m`): a bright bar sweeping left to right over a dark background."""
    out = bytearray(b"YUV4MPEG2 W%d H%d F%d:1 Ip A1:1 C420jpeg\n" % (width, height, fps))
    frames = fps * seconds
    for n in range(frames):
        bar = n * width // frames
        luma = bytearray()
        for y in range(height):
            for x in range(width):
                luma.append(235 if abs(x - bar) <= 2 else 16 + 4 * y)
        chroma = bytes([128]) * ((width // 2) * (height // 2))
        out += b"FRAME\n" + luma + chroma + chroma
    with open(path, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    png(os.path.join(HERE, "gradient.png"))
    wav(os.path.join(HERE, "tone.wav"))
    y4m(os.path.join(HERE, "sweep.y4m"))
    for name in sorted(os.listdir(HERE)):
        if name != "generate.py":
            print(f"{name:14} {os.path.getsize(os.path.join(HERE, name)):>7} bytes")
