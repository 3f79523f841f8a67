"""Decode memory: peak RSS of decoding one 40 MP image, against the decoded output (issue 15, item 7).

Three sources of ``--megapixels`` (default 40, 4:3), as a hostile or careless client may send:

* PNG, RGBA with a gradient alpha (the 16 MP case of the issue peaked at +306 MB);
* TIFF, 32-bit float, deflate-compressed (a few hundred KB; 16 MP peaked at +321 MB);
* JPEG, RGB, quality 90 (decoded at a DCT reduction already before the fix).

Each decode (``imaging.decode_image`` at the default ``MAX_IMAGE_SIDE``, 1333) runs in a fresh
child process that reads the file, resets its peak-RSS mark (``/proc/self/clear_refs``), decodes
once and reports ``VmHWM - VmRSS`` before the decode: the decode's own peak, imports and input
bytes excluded (Linux only). ``--repeats`` children per format; the median is kept.

``ratio`` = the worst format's peak / the decoded output (uint8 RGB at 1333 on the long side,
5.3 MB at 4:3); ``target`` = 50: the raster the format's decoder produces at full resolution
(4 bytes/pixel for RGBA or float: 160 MB at 40 MP, 30x the output) is the one copy left, plus
reduction bands (``imaging.decode.BAND_PIXELS``) and allocator slack. Before the fix every
non-JPEG also had full-resolution RGBA/float64/RGB copies (~150x).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_decode_memory.py [--megapixels 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

TARGET = 50.0
MAX_SIDE = 1333  # Settings.max_image_side

CHILD = """
import json, sys
from imaging.decode import decode_image

def kib(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
max_side = int(sys.argv[2])
with open("/proc/self/clear_refs", "w") as marks:
    marks.write("5")  # peak RSS := current RSS
before = kib("VmRSS")
image = decode_image(data, 178_000_000, max_side)
print(json.dumps({"peak": kib("VmHWM") - before, "shape": list(image.pixels.shape),
                  "size": [image.width, image.height]}))
"""


def gradient(width: int, height: int, channels: int) -> np.ndarray:
    """Smooth float32 values in 0..255, distinct along each axis and channel (compresses well)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    planes = [(x + y * (c + 1) / channels) % 256 for c in range(channels)]
    return np.stack(planes, axis=-1) if channels > 1 else planes[0]


def source(kind: str, width: int, height: int) -> bytes:
    """Encoded test image: ``png`` (RGBA), ``tiff`` (float), ``jpeg`` (RGB)."""
    buffer = io.BytesIO()
    if kind == "png":
        Image.fromarray(gradient(width, height, 4).astype(np.uint8), "RGBA").save(buffer, "PNG", compress_level=1)
    elif kind == "tiff":
        Image.fromarray(gradient(width, height, 1), "F").save(buffer, "TIFF", compression="tiff_adobe_deflate")
    else:
        Image.fromarray(gradient(width, height, 3).astype(np.uint8), "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@dataclass(frozen=True)
class DecodePeak:
    peak: int  # bytes of RSS above what the process held before decoding
    shape: tuple[int, ...]  # of the decoded pixels
    size: tuple[int, int]  # the original size the decode reported

    @property
    def output(self) -> int:
        return math.prod(self.shape)


def decode_peak(path: Path, max_side: int = MAX_SIDE) -> DecodePeak:
    """Decode ``path`` once in a fresh interpreter (Linux: it reads ``/proc/self``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_side)], env=env,
                          capture_output=True, text=True, check=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return DecodePeak(report["peak"], tuple(report["shape"]), tuple(report["size"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width = int(math.sqrt(args.megapixels * 1e6 * 4 / 3))
    height = int(args.megapixels * 1e6 / width)
    from benchmarks.common import machine  # torch: only when run as the benchmark

    print(f"machine: {machine()}")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("png", "tiff", "jpeg"):
            path = Path(tmp) / f"source.{kind}"
            path.write_bytes(source(kind, width, height))
            runs = [decode_peak(path) for _ in range(args.repeats)]
            peak = statistics.median(r.peak for r in runs)
            row = {"file_mb": round(path.stat().st_size / 1e6, 2), "peak_mb": round(peak / 1e6, 1),
                   "peaks_mb": [round(r.peak / 1e6, 1) for r in runs], "output_mb": round(runs[0].output / 1e6, 2),
                   "ratio": round(peak / runs[0].output, 1), "shape": list(runs[0].shape)}
            results[kind] = row
            print(f"{kind}: {width}x{height} ({row['file_mb']} MB file) -> {row['shape']}: peak {row['peak_mb']} MB "
                  f"({row['peaks_mb']}) for {row['output_mb']} MB of output, ratio {row['ratio']}")
    worst = max(row["ratio"] for row in results.values())
    summary = {"ratio": worst, "target": TARGET, "megapixels": args.megapixels, "size": [width, height],
               "max_side": MAX_SIDE, "by_format": results, "repeats": args.repeats, "machine": machine()}
    print(f"worst peak / output = {worst} (target <= {TARGET})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
