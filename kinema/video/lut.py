"""3D colour LUTs: read and write Adobe / Resolve `.cube` files, apply them to frames by trilinear interpolation.

    lut = load_cube("film.cube")
    graded = apply_lut(frames, lut)        # frames (..., 3) float in [0, 1]

The .cube format: optional `TITLE "..."`, `LUT_3D_SIZE N` (2..256; 17, 33 and 65 are common), optional
`DOMAIN_MIN r g b` / `DOMAIN_MAX r g b` (or Resolve's `LUT_3D_INPUT_RANGE lo hi`), `#` comments and blank lines,
then N^3 rows of three numbers with red varying fastest, then green, then blue. 1D LUTs (`LUT_1D_SIZE`) are not
supported. Malformed files raise ValueError naming the file and the line.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from kinema.video.io import atomic_file

log = logging.getLogger(__name__)

MIN_SIZE, MAX_SIZE = 2, 256


@dataclass(frozen=True)
class Lut3D:
    """A 3D LUT: table[b, g, r] is the output RGB for input grid point (r, g, b) (the file's order)."""

    table: torch.Tensor                                # (N, N, N, 3) float32
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    title: str = ""

    @property
    def size(self) -> int:
        return self.table.shape[0]


def identity_lut(size: int = 33) -> Lut3D:
    """The LUT that maps every colour to itself."""
    g = torch.linspace(0, 1, size)
    b, gg, r = torch.meshgrid(g, g, g, indexing="ij")
    return Lut3D(torch.stack([r, gg, b], dim=-1))


def _floats(path, lineno: int, tokens: list[str], count: int, what: str) -> list[float]:
    if len(tokens) != count:
        raise ValueError(f"{path}:{lineno}: {what} needs {count} values, got {len(tokens)}")
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(f"{path}:{lineno}: non-numeric value in {what}: {' '.join(tokens)!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{path}:{lineno}: non-finite value in {what}")
    return values


def _keyword(path, lineno: int, key: str, rest: list[str], line: str, header: dict) -> None:
    """Handle one keyword line of a .cube file, updating `header`."""
    if key == "TITLE":
        header["title"] = line.split(None, 1)[1].strip().strip('"') if rest else ""
    elif key in ("LUT_1D_SIZE", "LUT_1D_INPUT_RANGE"):
        raise ValueError(f"{path}:{lineno}: 1D LUTs are not supported (only LUT_3D_SIZE)")
    elif key == "LUT_3D_SIZE":
        if len(rest) != 1 or not rest[0].isdigit() or not MIN_SIZE <= int(rest[0]) <= MAX_SIZE:
            raise ValueError(f"{path}:{lineno}: LUT_3D_SIZE must be one whole number in [{MIN_SIZE}, {MAX_SIZE}]")
        header["size"] = int(rest[0])
    elif key in ("DOMAIN_MIN", "DOMAIN_MAX"):
        header[key] = tuple(_floats(path, lineno, rest, 3, key))
    elif key == "LUT_3D_INPUT_RANGE":
        lo, hi = _floats(path, lineno, rest, 2, key)
        header["DOMAIN_MIN"], header["DOMAIN_MAX"] = (lo,) * 3, (hi,) * 3
    else:
        log.warning("%s:%d: ignoring unknown keyword %s", path, lineno, key)


def parse_cube(text: str, path: str | os.PathLike = "<cube>") -> Lut3D:
    """Parse the text of a .cube file; ValueError naming `path` and the line when it is malformed."""
    header: dict = {}
    rows: list[list[float]] = []
    last_line = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        if tokens[0][0].isalpha() and tokens[0].replace("_", "").isalnum() and tokens[0].upper() == tokens[0]:
            if rows:
                raise ValueError(f"{path}:{lineno}: keyword {tokens[0]} after the data")
            _keyword(path, lineno, tokens[0], tokens[1:], line, header)
            continue
        rows.append(_floats(path, lineno, tokens, 3, "a data row"))
        last_line = lineno
    if "size" not in header:
        raise ValueError(f"{path}: missing LUT_3D_SIZE (is it a 3D .cube LUT?)")
    n = header["size"]
    if len(rows) != n ** 3:
        raise ValueError(f"{path}:{last_line}: expected {n}^3 = {n ** 3} data rows for LUT_3D_SIZE {n}, "
                         f"got {len(rows)}")
    lo, hi = header.get("DOMAIN_MIN", (0.0,) * 3), header.get("DOMAIN_MAX", (1.0,) * 3)
    if any(a >= b for a, b in zip(lo, hi)):
        raise ValueError(f"{path}: DOMAIN_MIN must be below DOMAIN_MAX, got {lo} and {hi}")
    table = torch.tensor(rows, dtype=torch.float32).reshape(n, n, n, 3)
    return Lut3D(table, lo, hi, header.get("title", ""))


def load_cube(path: str | os.PathLike) -> Lut3D:
    """Read a .cube file; ValueError (naming the file, and the line where there is one) if it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read LUT {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_cube(text, path)


def write_cube(path: str | os.PathLike, lut: Lut3D) -> Path:
    """Write a .cube file (atomically), red varying fastest."""
    lines = [f'TITLE "{lut.title}"'] if lut.title else []
    lines.append(f"LUT_3D_SIZE {lut.size}")
    if lut.domain_min != (0.0,) * 3 or lut.domain_max != (1.0,) * 3:
        lines += ["DOMAIN_MIN " + " ".join(map(repr, lut.domain_min)),
                  "DOMAIN_MAX " + " ".join(map(repr, lut.domain_max))]
    lines += [f"{r:.6f} {g:.6f} {b:.6f}" for r, g, b in lut.table.reshape(-1, 3).tolist()]
    with atomic_file(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    return Path(path)


def apply_lut(frames: torch.Tensor, lut: Lut3D) -> torch.Tensor:
    """Grade frames (..., 3) float in [0, 1] through the LUT: trilinear interpolation between the 8 surrounding
    grid points (a gather per corner, all pixels at once). Inputs outside the LUT's domain are clamped to it."""
    n = lut.size
    flat = lut.table.to(frames.device, frames.dtype).reshape(-1, 3)        # row index = r + n * g + n^2 * b
    lo = frames.new_tensor(lut.domain_min)
    hi = frames.new_tensor(lut.domain_max)
    pos = ((frames - lo) / (hi - lo)).clamp(0, 1) * (n - 1)
    base = pos.floor().clamp(max=n - 2)
    frac = pos - base
    base = base.long()
    first = base[..., 0] + n * base[..., 1] + n * n * base[..., 2]         # the (0, 0, 0) corner's row
    out = torch.zeros_like(frames)
    for corner in range(8):
        dr, dg, db = ((corner >> k) & 1 for k in range(3))
        weight = torch.ones_like(frac[..., :1])
        for axis, d in enumerate((dr, dg, db)):
            weight = weight * (frac[..., axis:axis + 1] if d else 1 - frac[..., axis:axis + 1])
        out += weight * flat[first + (dr + n * dg + n * n * db)]
    return out.clamp(0, 1)
