"""Overlapping tiles with feathered blending: how RAR runs its convolutional and transformer parts
on images larger than they were trained on, in bounded memory.

The loop still makes one decision per image (loop.py): the LQA sees one bounded view of the whole
latent, and only the per-pixel work (the codec, the restorer's velocity) goes through `blend`.
Every window of a grid has the same size, so windows batch into one forward; neighbours overlap
and are mixed with weights that ramp linearly across the overlap (they sum to one there), so a
difference between two windows becomes a gentle gradient, never a step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# fn(tiles [N, C, th, tw], items) -> [N, C', th * scale, tw * scale]; `items` indexes the batch
# items the N tiles belong to (so per-item conditioning can follow its tiles).
TileFn = Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor]
OnTile = Callable[[int, int], None]


def starts(n: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Window starts along one side of length n: windows of `tile` overlapping by at least
    `overlap`, the last one flush with the end. All starts are multiples of `multiple` when n is."""
    if n <= tile:
        return [0]
    step = max(multiple, (tile - overlap) // multiple * multiple)
    s = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(s))


@dataclass(frozen=True)
class Grid:
    """The windows over an h x w plane: equal `th` x `tw` windows at (y, x) for y in ys, x in xs."""

    th: int
    tw: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @staticmethod
    def over(h: int, w: int, tile: int, overlap: int, multiple: int = 1) -> "Grid":
        if tile % multiple:
            raise ValueError(f"tile {tile} must be a multiple of {multiple}")
        if overlap * 2 >= tile:
            raise ValueError(f"overlap {overlap} must be less than half the tile size {tile}")
        return Grid(min(tile, h), min(tile, w), tuple(starts(h, tile, overlap, multiple)),
                    tuple(starts(w, tile, overlap, multiple)))

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def windows(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]


def ramp(n: int, overlap: int, first: bool, last: bool, like: torch.Tensor) -> torch.Tensor:
    """1-D feather weights of one window side: rising over the first `overlap` samples unless the
    window starts at the border, falling over the last unless it ends there; never zero."""
    r = torch.ones(n, dtype=like.dtype, device=like.device)
    up = torch.linspace(0, 1, overlap + 2, dtype=like.dtype, device=like.device)[1:-1]
    if overlap and not first:
        r[:overlap] = up
    if overlap and not last:
        r[n - overlap :] = torch.minimum(r[n - overlap :], up.flip(0))
    return r


def blend(
    x: torch.Tensor,
    fn: TileFn,
    tile: int,
    overlap: int,
    *,
    multiple: int = 1,
    scale: int | float = 1,
    batch: int = 1,
    on_tile: OnTile | None = None,
) -> torch.Tensor:
    """fn over overlapping windows of x [B, C, H, W], blended into one [B, C', H*scale, W*scale].

    Windows are at most `tile` a side, start on multiples of `multiple`, and go `batch` windows
    (times B items) per call of fn. `on_tile(done, total)` runs after each call with the windows
    done so far; an exception raised there stops the work. When x fits in one window, fn sees x
    itself and its result is returned untouched, so small inputs run exactly the untiled code.
    """
    B, _, H, W = x.shape
    grid = Grid.over(H, W, tile, overlap, multiple)
    if len(grid) == 1:
        out = fn(x, slice(None))
        if on_tile is not None:
            on_tile(1, 1)
        return out
    sy, sx = (round(grid.th * scale), round(grid.tw * scale))
    if sy != grid.th * scale or sx != grid.tw * scale:
        raise ValueError(f"tile {grid.th}x{grid.tw} times scale {scale} is not a whole number of samples")
    o = round(overlap * scale)
    out = weight = None
    windows = grid.windows
    per_call = max(1, batch // B)
    items = torch.arange(B)
    for k in range(0, len(windows), per_call):
        chunk = windows[k : k + per_call]
        tiles = torch.cat([x[:, :, y : y + grid.th, x0 : x0 + grid.tw] for y, x0 in chunk])
        res = fn(tiles, items.repeat(len(chunk)))
        if out is None:
            out = res.new_zeros(B, res.shape[1], round(H * scale), round(W * scale))
            weight = res.new_zeros(1, 1, out.shape[-2], out.shape[-1])
        for j, (y, x0) in enumerate(chunk):
            Y, X = round(y * scale), round(x0 * scale)
            wy = ramp(sy, o, y == 0, y + grid.th >= H, out)
            wx = ramp(sx, o, x0 == 0, x0 + grid.tw >= W, out)
            w = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, Y : Y + sy, X : X + sx] += res[j * B : (j + 1) * B] * w
            weight[:, :, Y : Y + sy, X : X + sx] += w
        if on_tile is not None:
            on_tile(k + len(chunk), len(windows))
    return out / weight
