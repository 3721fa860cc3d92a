"""Images and clip frames → vision-tower inputs: smart_resize, bicubic resize, CLIP normalisation and
patchify into 1176-wide rows in merge-block order (docs/model.md §2.4, §4.3, §4.4). numpy + PIL only.

Resizing is PIL bicubic on uint8 RGB, as in `qwen-omni-utils.fetch_image` and transformers'
`Qwen2VLImageProcessorPil`, so image rows match that processor exactly. Clip frames are resized the
same way here, whereas the reference resizes them with torchvision `resize(bicubic, antialias=True)`
on the decoded tensor (torchvision cannot run on these machines). PIL's bicubic also antialiases
when downscaling, but the two kernels round differently: a small pixel-level difference (a few
grey levels at edges) from the reference's clip pixels, documented rather than hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from omniagent_jax.processing import budgets

ImageLike = np.ndarray | Image.Image


def smart_resize(
    height: int,
    width: int,
    factor: int = budgets.FACTOR,
    min_pixels: float = budgets.IMAGE_MIN_PIXELS,
    max_pixels: float = budgets.IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
    """Qwen's `smart_resize`: sides rounded to multiples of `factor` (at least `factor`), with the area
    scaled into [min_pixels, max_pixels] keeping the aspect ratio (floor when shrinking, ceil when growing).

    Follows qwen-vl-utils (the reference's `fetch_image`, which runs first): the initial rounding is
    clamped to `factor`, so a side shorter than 14 px gives 28 rather than the HF processor's 0.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image sides must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > budgets.MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio of a {height}x{width} image is {max(height, width) / min(height, width):.1f}; "
            f"at most {budgets.MAX_ASPECT_RATIO} is supported"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode) or a uint8 `[H, W, 3|4]` / `[H, W]` array;
    transparency is composited onto white, as the reference does."""
    if isinstance(image, Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image must be a numpy array or a PIL image, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0-255), got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image arrays must be [H, W, 3], [H, W, 4] or [H, W], got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.shape[2] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(image), "RGBA"))
    return Image.fromarray(np.ascontiguousarray(image), "RGB")


def resize_image(image: ImageLike, min_pixels: float, max_pixels: float) -> Image.Image:
    """`image` as RGB, resized (PIL bicubic) to `smart_resize` of its size within the budget.

    PIL returns an unchanged copy when the size already fits, so a second pass is a no-op.
    """
    rgb = to_rgb(image)
    height, width = smart_resize(rgb.height, rgb.width, min_pixels=min_pixels, max_pixels=max_pixels)
    return rgb.resize((width, height), Image.BICUBIC)


def normalize(pixels: np.ndarray) -> np.ndarray:
    """uint8 `[..., 3]` → float32 CLIP-normalised values, with the reference's casts: the rescale
    `x · (1/255)` in float64, cast to float32, then `(x − mean) / std` in float32."""
    scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(budgets.IMAGE_MEAN, np.float32)
    std = np.asarray(budgets.IMAGE_STD, np.float32)
    return (scaled - mean) / std


def patchify(frames: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Normalised frames `[T, H, W, C]` (T a multiple of the temporal patch, H and W of 28) → rows
    `[t·h·w, C·2·14·14]` in merge-block order and the grid `(t, h, w)` in 14-px patches.

    Row order: temporal patch, merged row, merged col, inner row, inner col; each row holds the
    `(C, T, 14, 14)` pixels channel-major, which is what the tower's Conv3d kernel reads.
    """
    n_frames, height, width, channels = frames.shape
    p, m, tp = budgets.PATCH_SIZE, budgets.MERGE_SIZE, budgets.TEMPORAL_PATCH_SIZE
    if n_frames % tp or height % (p * m) or width % (p * m):
        raise ValueError(f"frames {frames.shape} do not tile into {tp}x{p * m}x{p * m} blocks")
    grid_t, grid_h, grid_w = n_frames // tp, height // p, width // p
    blocks = frames.reshape(grid_t, tp, grid_h // m, m, p, grid_w // m, m, p, channels)
    # (gt, tp, bh, ih, ph, bw, iw, pw, C) → (gt, bh, bw, ih, iw, C, tp, ph, pw)
    blocks = blocks.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    rows = blocks.reshape(grid_t * grid_h * grid_w, channels * tp * p * p)
    return np.ascontiguousarray(rows, dtype=np.float32), (grid_t, grid_h, grid_w)


def process_images(
    images: Sequence[ImageLike],
    min_pixels: float = budgets.IMAGE_MIN_PIXELS,
    max_pixels: float = budgets.IMAGE_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """Still images → `(pixel_values [Σ h·w, 1176] float32, image_grid_thw [n, 3] int64)`.

    Each image is resized into the budget, normalised and duplicated to the 2 frames of one temporal
    patch (grid_t = 1). Defaults are the get_frames budget (4·28² … 1024·28², docs/protocol.md §8).
    """
    if len(images) == 0:
        raise ValueError("process_images needs at least one image")
    rows, grids = [], []
    for image in images:
        pixels = np.asarray(resize_image(image, min_pixels, max_pixels))
        frames = np.repeat(normalize(pixels)[None], budgets.TEMPORAL_PATCH_SIZE, axis=0)
        image_rows, grid = patchify(frames)
        rows.append(image_rows)
        grids.append(grid)
    return np.concatenate(rows), np.asarray(grids, np.int64)


def process_video(
    frames: np.ndarray,
    min_pixels: float = budgets.VIDEO_MIN_PIXELS,
    max_pixels: float | None = None,
    fps: float = budgets.VIDEO_FPS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Clip frames uint8 `[T, H, W, 3]` → `(pixel_values_videos [t·h·w, 1176] float32,
    video_grid_thw [1, 3] int64, second_per_grid)`.

    Every frame gets the same `smart_resize` size: the clip budget of docs/model.md §4.4, whose per-frame
    max depends on T (`budgets.video_frame_max_pixels`) unless `max_pixels` is given. An odd frame
    count is padded by repeating the last frame. `second_per_grid = 2 / fps`; the reference processor
    assumes fps 2.0 whatever the sampling rate was, hence 1.0.
    """
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"video frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise TypeError(f"video frames must be uint8 (0-255), got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"video frames must be [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(f"video is empty: frames shape {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    n_frames, height, width, _ = frames.shape
    if max_pixels is None:
        max_pixels = budgets.video_frame_max_pixels(n_frames)
    new_h, new_w = smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels)
    resized = np.stack(
        [np.asarray(Image.fromarray(np.ascontiguousarray(f), "RGB").resize((new_w, new_h), Image.BICUBIC)) for f in frames]
    )
    pad = -n_frames % budgets.TEMPORAL_PATCH_SIZE
    if pad:
        resized = np.concatenate([resized, np.repeat(resized[-1:], pad, axis=0)])
    rows, grid = patchify(normalize(resized))
    return rows, np.asarray([grid], np.int64), budgets.TEMPORAL_PATCH_SIZE / fps
