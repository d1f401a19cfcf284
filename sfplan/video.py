"""Videos on disk: columns side by side with labels, written as mp4 or gif."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _label(width: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (width, 12), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 0), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(img)


def side_by_side(columns: list[np.ndarray], labels: list[str] | None = None, scale: int = 1,
                 gap: int = 2) -> np.ndarray:
    """columns: each (T_i, H, W, 3) uint8 -> (T, H', W', 3) video with the columns side
    by side (shorter ones hold their last frame), upscaled ``scale`` x, labels on top."""
    T = max(len(c) for c in columns)
    cols = []
    for c in columns:
        c = np.asarray(c)
        if len(c) < T:
            c = np.concatenate([c, np.repeat(c[-1:], T - len(c), axis=0)])
        c = c.repeat(scale, axis=1).repeat(scale, axis=2)
        cols.append(c)
    if labels:
        cols = [np.concatenate([np.broadcast_to(_label(c.shape[2], lab), (T, 12, c.shape[2], 3)), c], axis=1)
                for c, lab in zip(cols, labels)]
    sep = np.full((T, cols[0].shape[1], gap, 3), 255, np.uint8)
    parts = []
    for i, c in enumerate(cols):
        parts += [c] if i == 0 else [sep, c]
    return np.concatenate(parts, axis=2)


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """(T, H, W, 3) uint8 -> mp4 (H.264, dims padded to even) or gif, by suffix (imageio v3)."""
    import imageio.v3 as iio

    path = Path(path)
    frames = np.ascontiguousarray(frames)
    if path.suffix == ".gif":
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
        return
    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))
    iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
