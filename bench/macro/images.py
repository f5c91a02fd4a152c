"""Test images: random data, sparse data, and the byte-for-byte check of a copy."""

import os
import random
import subprocess
from pathlib import Path

MiB = 1 << 20


def random_image(path, size):
    """A raw image of `size` bytes of random data (made once, reused)."""
    path = Path(path)
    if path.exists() and path.stat().st_size == size:
        return path
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(os.urandom(n))
            left -= n
    tmp.rename(path)
    return path


def sparse_image(path, size, data_fraction=0.25, extent=MiB, seed=42):
    """A raw image with `data_fraction` of its 1 MiB extents random data and the rest holes."""
    path = Path(path)
    if path.exists() and path.stat().st_size == size:
        return path
    extents = size // extent
    chosen = sorted(random.Random(seed).sample(range(extents), int(extents * data_fraction)))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
        for e in chosen:
            f.seek(e * extent)
            f.write(os.urandom(extent))
    tmp.rename(path)
    return path


def blank_image(path, size):
    """A fresh sparse destination image (any previous content removed)."""
    path = Path(path)
    if path.exists():
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def identical(a, b):
    """True if the two files have the same bytes (cmp)."""
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0
