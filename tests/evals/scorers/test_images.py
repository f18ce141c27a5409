"""Decoding images for the scorers: an image's header is checked before its pixels are."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

from darkroom.evals.scorers.images import decode_all
from darkroom.platform.data.records import encode_png

ROOT = Path(__file__).resolve().parents[3]


def png_bomb(side: int) -> bytes:
    """A real PNG of side x side black RGB pixels, compressed as it is made: about 240 KB for
    9000 x 9000, which decode to 243 MB."""
    deflate = zlib.compressobj(9)
    line = b"\x00" * (1 + 3 * side)  # filter byte, then the row's pixels
    data = b"".join(deflate.compress(line) for _ in range(side)) + deflate.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_an_image_larger_than_its_row_says_is_not_decoded():
    bomb, small = png_bomb(9000), encode_png(np.full((64, 64, 3), 200, np.uint8))
    assert len(bomb) < 300_000
    images, reasons = decode_all([small, bomb, bomb, small], widths=[64, 64, None, None],
                                 heights=[64, 64, None, None])
    assert reasons[0] == reasons[3] == ""
    assert "declares 9000 x 9000 pixels, more than its row's 64 x 64" in reasons[1]
    assert "9000 x 9000" in reasons[2] and "67,108,864-pixel cap" in reasons[2]
    assert [image.shape for image in images] == [(64, 64, 3)] * 4  # stand-ins at the good size
    assert (images[0] == 200).all() and (images[1] == 0).all()


def test_decoding_two_bombs_takes_no_memory(tmp_path):
    """The scorer's memory follows what the rows declare: two 9000 x 9000 PNGs (which decode to
    243 MB each) raise the peak memory of a fresh process by almost nothing."""
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(9000))
    script = (
        "import resource, sys\n"
        "from darkroom.evals.scorers.images import decode_all\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "images, reasons = decode_all([data, data])\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(grown // 1024, '|'.join(reasons))\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    grown_mb, reasons = done.stdout.split(" ", 1)
    assert int(grown_mb) < 50, done.stdout
    assert reasons.count("9000 x 9000") == 2
