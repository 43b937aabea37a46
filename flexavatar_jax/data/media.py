"""Image and video I/O for the user-facing commands: portrait loading, PNG/GIF/MP4 writing, grids,
reading videos (GIF; MP4 and other containers through OpenCV, the `faces` extra), side-by-side videos.

Every file is written atomically (`files`: a temporary sibling renamed into place).
Pixel values in memory are float32 in [0,1] (or uint8 where stated); images are `[H,W,3]` RGB,
videos `[T,H,W,3]`. Nothing is cropped or clipped silently: non-square portraits, out-of-range
floats and non-finite values raise ValueError naming the file or array.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8
from PIL import Image, ImageOps, UnidentifiedImageError

from flexavatar_jax.files import replacing, write_atomic

MAX_PORTRAITS = 4  # FlexAvatar conditions on 1-4 input views.
VIDEO_SUFFIXES = (".gif", ".mp4")

PathLike = str | os.PathLike


def _image_to_float(image: Image.Image, path: Path) -> np.ndarray:
    """PIL image -> float32 `[H,W,3]` or `[H,W,4]` (RGB[A]) in [0,1]."""
    mode = image.mode
    if mode == "F":
        # 32-bit float greyscale (e.g. TIFF): values are taken as they are, so they must be in [0,1].
        grey = np.asarray(image, dtype=np.float32)
        if not np.all(np.isfinite(grey)):
            raise ValueError(f"{path}: image has non-finite values (NaN or inf)")
        if grey.min() < 0 or grey.max() > 1:
            raise ValueError(f"{path}: float image values must lie in [0,1], got [{grey.min():.4g}, {grey.max():.4g}]")
        return np.repeat(grey[..., None], 3, axis=-1)
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        # 16-bit greyscale PNGs load as integer modes; 65535 is their white.
        grey = np.asarray(image, dtype=np.float32) / 65535.0
        if grey.min() < 0 or grey.max() > 1:
            raise ValueError(f"{path}: integer image with values outside 16-bit range")
        return np.repeat(grey[..., None], 3, axis=-1)
    # Palette images may carry transparency in `info`; LA/PA likewise have alpha.
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        image = image.convert("RGBA" if has_alpha else "RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"{path}: cannot convert image mode {mode!r} to RGB: {e}") from e
    return np.asarray(image, dtype=np.float32) / 255.0


def read_image_file(path: PathLike) -> Float[np.ndarray, "h w c"]:
    """float32 `[H,W,3]` or `[H,W,4]` (RGB[A]) in [0,1] of an image file (any format Pillow reads),
    EXIF orientation applied, greyscale replicated to RGB (`_image_to_float`). FileNotFoundError
    for a missing path, ValueError naming the file for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"portrait image not found: {path}")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return _image_to_float(image, path)
    except UnidentifiedImageError as e:
        raise ValueError(f"{path}: not a readable image file") from e
    except (OSError, SyntaxError, EOFError) as e:  # truncated or corrupt data inside a known format
        raise ValueError(f"{path}: corrupt or truncated image ({type(e).__name__}: {e})") from e


def _resize_lanczos(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize float `[H,W,C]` (C = 3 or 4, alpha last) to `[size,size,C]` with Lanczos.

    Colour is resized premultiplied by alpha so that the (arbitrary) colour of transparent pixels
    does not bleed into the edge of the subject. Lanczos rings slightly past [0,1] at sharp edges;
    that overshoot is an artefact of the filter, not data, so it is clipped back.
    """
    has_alpha = pixels.shape[-1] == 4
    if has_alpha:
        alpha = pixels[..., 3:]
        pixels = np.concatenate([pixels[..., :3] * alpha, alpha], axis=-1)
    channels = []
    for c in range(pixels.shape[-1]):
        plane = Image.fromarray(np.ascontiguousarray(pixels[..., c], dtype=np.float32))  # mode F
        channels.append(np.asarray(plane.resize((size, size), Image.Resampling.LANCZOS)))
    out = np.clip(np.stack(channels, axis=-1), 0.0, 1.0)
    if has_alpha:
        alpha = out[..., 3:]
        rgb = np.where(alpha > 1e-6, out[..., :3] / np.maximum(alpha, 1e-6), 0.0)
        out = np.concatenate([np.clip(rgb, 0.0, 1.0), alpha], axis=-1)
    return out.astype(np.float32)


def portrait_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """One path or a sequence of paths as a list of 1-`MAX_PORTRAITS` Paths, or ValueError."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not 1 <= len(paths) <= MAX_PORTRAITS:
        raise ValueError(f"got {len(paths)} portrait images; between 1 and {MAX_PORTRAITS} are allowed")
    return paths


def load_portraits(
    paths: PathLike | Sequence[PathLike], size: int = 512, *, allow_resize: bool = True
) -> tuple[Float[np.ndarray, "v size size 3"], Float[np.ndarray, "v size size"] | None]:
    """Load 1-4 square portrait images as the avatar's input views.

    Args:
      paths: one path or a sequence of 1-4 paths (any format Pillow reads; EXIF orientation of
        phone photos is applied first).
      size: output side length in pixels.
      allow_resize: resize square images of another size with Lanczos; if False they raise.

    Returns:
      `(images, alphas)`: images float32 `[V,size,size,3]` RGB in [0,1] (greyscale is replicated
      to RGB; colour is *not* composited over any background), and alphas float32
      `[V,size,size]` in [0,1] if any image had an alpha channel (1 for views without one),
      else None.

    Raises:
      ValueError: 0 or more than 4 paths, a non-square or unreadable image, or a size mismatch
        with `allow_resize=False`. FileNotFoundError: a path that does not exist.
    """
    paths = portrait_paths(paths)
    views = []
    for path in paths:
        pixels = read_image_file(path)
        height, width = pixels.shape[:2]
        if height != width:
            raise ValueError(
                f"{path}: image is {width}x{height} (WxH) but portraits must be square; "
                f"crop it to a square around the face first"
            )
        if height != size:
            if not allow_resize:
                raise ValueError(f"{path}: image is {width}x{height}, expected {size}x{size}")
            pixels = _resize_lanczos(pixels, size)
        views.append(pixels)

    images = np.stack([v[..., :3] for v in views]).astype(np.float32)
    if all(v.shape[-1] == 3 for v in views):
        return images, None
    alphas = np.stack([v[..., 3] if v.shape[-1] == 4 else np.ones((size, size)) for v in views])
    return images, alphas.astype(np.float32)


def _to_uint8(pixels, name: str, ndim: int) -> np.ndarray:
    """Validate float-in-[0,1] or uint8 pixels with trailing RGB axis; return uint8."""
    array = np.asarray(pixels)
    if array.ndim != ndim or array.shape[-1] != 3:
        want = "[T,H,W,3]" if ndim == 4 else "[H,W,3]"
        raise ValueError(f"{name} must have shape {want}, got {list(array.shape)}")
    if array.size == 0:
        raise ValueError(f"{name} is empty, shape {list(array.shape)}")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0,1] or uint8, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite values (NaN or inf)")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0,1], got range [{lo:.4g}, {hi:.4g}]")
    return np.round(array.astype(np.float64) * 255.0).astype(np.uint8)


def save_image(
    path: PathLike, image: Float[np.ndarray, "h w 3"] | UInt8[np.ndarray, "h w 3"]
) -> None:
    """Write an RGB image (float in [0,1] or uint8) as PNG; parent folders are created."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path}: save_image writes PNG only, use a .png suffix")
    pixels = _to_uint8(image, "image", ndim=3)
    write_atomic(path, lambda f: Image.fromarray(pixels).save(f, "PNG"))


def check_video_path(path: PathLike) -> Path:
    """`path` as a Path if `write_video` can write it (a known suffix; for .mp4 the ffmpeg plugin
    is installed), else ValueError saying what to change: call it before expensive work."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: unknown video type {suffix!r}; supported: {VIDEO_SUFFIXES}")
    if suffix == ".mp4":
        try:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401  (only to detect that the ffmpeg plugin can run)
        except ImportError:
            raise ValueError(f"{path}: writing .mp4 needs the ffmpeg plugin: pip install imageio-ffmpeg "
                             "(writing .gif works without it)") from None
    return path


def write_video(
    path: PathLike,
    frames: Float[np.ndarray, "t h w 3"] | UInt8[np.ndarray, "t h w 3"],
    fps: float = 25,
) -> None:
    """Write frames (float in [0,1] or uint8) as `.gif` (looping) or `.mp4` (H.264).

    GIF needs only Pillow: each frame gets its own 256-colour palette, its frame duration is
    rounded to GIF's 10 ms unit, and Pillow merges identical consecutive frames (playback timing
    is unchanged). MP4 needs the `imageio-ffmpeg` package and even frame sizes (H.264 yuv420p).
    Parent folders are created.
    """
    path = check_video_path(path)
    suffix = path.suffix.lower()
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    pixels = _to_uint8(frames, "frames", ndim=4)

    if suffix == ".gif":
        images = [Image.fromarray(frame) for frame in pixels]
        write_atomic(path, lambda f: images[0].save(
            f,
            "GIF",
            save_all=True,
            append_images=images[1:],
            duration=1000.0 / fps,
            loop=0,  # 0 = loop forever
        ))
        return

    import imageio.v2 as imageio  # check_video_path saw it installed

    height, width = pixels.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(
            f"{path}: H.264 mp4 needs even frame sizes, got {width}x{height}; use .gif or crop"
        )
    # macro_block_size=1: imageio would otherwise resize to multiples of 16 (with a warning);
    # yuv420p keeps the file playable in browsers and QuickTime.
    with replacing(path) as tmp, imageio.get_writer(
        tmp, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p",
        macro_block_size=1, quality=8,
    ) as writer:  # fmt: skip
        for frame in pixels:
            writer.append_data(frame)


def image_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Tile images `[H,W,C]` into one `[R*H, K*W, C]` image, row-major (e.g. one row per sample:
    inputs | prediction | target | error). Every row must have the same number K of tiles and
    every tile the same shape and dtype; anything else raises ValueError."""
    rows = [[np.asarray(tile) for tile in row] for row in rows]
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one row with at least one tile")
    first = rows[0][0]
    if first.ndim != 3:
        raise ValueError(f"tiles must be [H,W,C], tile (0,0) has shape {list(first.shape)}")
    for r, row in enumerate(rows):
        if len(row) != len(rows[0]):
            raise ValueError(f"row {r} has {len(row)} tiles, row 0 has {len(rows[0])}")
        for c, tile in enumerate(row):
            if tile.shape != first.shape or tile.dtype != first.dtype:
                raise ValueError(
                    f"tile ({r},{c}) is {list(tile.shape)} {tile.dtype}, tile (0,0) is "
                    f"{list(first.shape)} {first.dtype}"
                )
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


# ---------------------------------------------------------------------------------------------- reading videos
MAX_VIDEO_FRAMES = 100_000
VIDEO_READ_SUFFIXES = (".gif", ".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
DEFAULT_FPS = 25.0


def read_video(path: PathLike, max_frames: int | None = None, default_fps: float = DEFAULT_FPS) -> tuple[UInt8[np.ndarray, "t h w 3"], float]:
    """(frames uint8 `[T,H,W,3]` RGB, fps) of a `.gif` (Pillow) or `.mp4`/`.mov`/`.avi`/`.mkv`/
    `.webm`/`.m4v` (OpenCV, the `faces` extra). FileNotFoundError for a missing file; ValueError
    for an unknown suffix, an undecodable or corrupt file, or a video with 0 frames."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in VIDEO_READ_SUFFIXES:
        raise ValueError(f"{path}: unknown video type {suffix!r}; readable: {', '.join(VIDEO_READ_SUFFIXES)}")
    limit = MAX_VIDEO_FRAMES if max_frames is None else int(max_frames)
    if limit < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    frames: list[np.ndarray] = []
    if suffix == ".gif":
        from PIL import Image, ImageSequence, UnidentifiedImageError

        durations = []
        try:
            with Image.open(path) as im:
                for frame in ImageSequence.Iterator(im):
                    frames.append(np.asarray(frame.convert("RGB")))
                    durations.append(float(frame.info.get("duration", 0) or 40.0))
                    if len(frames) >= limit:
                        break
        except UnidentifiedImageError as e:
            raise ValueError(f"{path}: not a readable GIF") from e
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path}: corrupt or truncated GIF ({type(e).__name__}: {e})") from e
        # GIF writers (Pillow included) merge identical consecutive frames into one shown longer:
        # expand them back at the shortest frame duration, so time runs as in the source.
        step = min(durations) if durations else 40.0
        repeats = [max(1, round(d / step)) for d in durations]
        frames = [f for f, n in zip(frames, repeats) for _ in range(n)][:limit]
        fps = 1000.0 / step
    else:
        try:
            import cv2
        except ImportError:
            raise ValueError(f"{path}: reading {suffix} videos needs OpenCV (the faces extra: "
                             "pip install -e .[faces]); .gif works without it") from None
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise ValueError(f"{path}: cannot decode the video (corrupt file or unsupported codec)")
            fps = float(cap.get(cv2.CAP_PROP_FPS)) or default_fps
            while len(frames) < limit:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
        if not np.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = default_fps
    if not frames:
        raise ValueError(f"{path}: the video has 0 frames (or none could be decoded: corrupt file?)")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"{path}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames), float(fps)


def check_frames(frames) -> np.ndarray:
    """`frames` as uint8 `[T,H,W,3]` (float in [0,1] is converted, `_to_uint8`), or ValueError."""
    a = np.asarray(frames)
    if a.ndim == 4 and a.shape[0] == 0:
        raise ValueError("the video has 0 frames")
    return _to_uint8(a, "frames", 4)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two videos `[T,H,W,3]` (uint8 or float in [0,1]) next to each other, float32 `[T,H',W1+W2',3]`:
    the shorter side is resized to the taller one's height (aspect kept, bilinear), frame counts
    must match."""
    from PIL import Image

    a, b = check_frames(left), check_frames(right)
    if len(a) != len(b):
        raise ValueError(f"side_by_side: {len(a)} frames against {len(b)}")
    h = max(a.shape[1], b.shape[1])

    def fit(v):
        if v.shape[1] == h:
            return v
        w = max(2, int(round(v.shape[2] * h / v.shape[1])))
        return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR)) for f in v])

    a, b = fit(a), fit(b)
    out = np.concatenate([a, b], axis=2)
    if out.shape[2] % 2:  # H.264 needs even sizes
        out = out[:, :, :-1]
    if out.shape[1] % 2:
        out = out[:, :-1]
    return out.astype(np.float32) / 255.0
