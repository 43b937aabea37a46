"""Portrait loading, PNG/GIF/MP4 writing and image grids."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

from flexavatar_jax.data.media import image_grid, load_portraits, save_image, write_video

HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


def _gradient_rgb(size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _write(tmp_path, name, array, mode=None):
    path = tmp_path / name
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


def test_loads_exact_size_rgb_without_change(tmp_path):
    pixels = _gradient_rgb(16)
    images, alphas = load_portraits([_write(tmp_path, "a.png", pixels)], size=16)
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.float32
    np.testing.assert_array_equal(images[0], pixels / np.float32(255))
    assert alphas is None


def test_single_path_and_resize_keeps_a_flat_colour(tmp_path):
    path = _write(tmp_path, "flat.png", np.full((40, 40, 3), (255, 128, 0), np.uint8))
    images, _ = load_portraits(path, size=16)  # a bare path means one view
    assert images.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(images[0], np.broadcast_to([1.0, 128 / 255, 0.0], (16, 16, 3)), atol=1e-5)
    with pytest.raises(ValueError, match=r"flat\.png.*40x40, expected 16x16"):
        load_portraits(path, size=16, allow_resize=False)


def test_rgba_returns_alpha_and_keeps_colour_unpremultiplied(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :16, 3] = 255  # left half opaque, right half fully transparent
    path = _write(tmp_path, "cutout.png", rgba)
    opaque = _write(tmp_path, "plain.png", _gradient_rgb(32))
    images, alphas = load_portraits([path, opaque], size=32)
    assert alphas.shape == (2, 32, 32) and alphas.dtype == np.float32
    np.testing.assert_array_equal(alphas[0, :, :16], 1.0)
    np.testing.assert_array_equal(alphas[0, :, 16:], 0.0)
    np.testing.assert_array_equal(alphas[1], 1.0)  # view without alpha counts as opaque
    green = np.array([10, 200, 30]) / 255
    np.testing.assert_allclose(images[0, :, :16], np.broadcast_to(green, (32, 16, 3)))

    # Resized: colour of the opaque half is not darkened by the transparent (premultiplied) half.
    images, alphas = load_portraits([path], size=16)
    np.testing.assert_allclose(images[0, :, :6], np.broadcast_to(green, (16, 6, 3)), atol=2e-3)
    assert alphas[0, :, :6].min() > 0.99 and alphas[0, :, 10:].max() < 0.01


def test_greyscale_becomes_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    images, alphas = load_portraits([_write(tmp_path, "g.png", grey)], size=8)
    assert images.shape == (1, 8, 8, 3) and alphas is None
    for c in range(3):
        np.testing.assert_array_equal(images[0, ..., c], grey / np.float32(255))


@pytest.mark.parametrize("count", [0, 5])
def test_wrong_number_of_views(tmp_path, count):
    paths = [_write(tmp_path, f"{i}.png", _gradient_rgb(8)) for i in range(count)]
    with pytest.raises(ValueError, match=f"got {count} portrait images; between 1 and 4"):
        load_portraits(paths, size=8)


def test_non_square_missing_and_corrupt_files(tmp_path):
    wide = _write(tmp_path, "wide.jpg", np.zeros((10, 14, 3), np.uint8))
    with pytest.raises(ValueError, match=r"wide\.jpg: image is 14x10 .*crop it to a square"):
        load_portraits([wide], size=10)
    with pytest.raises(FileNotFoundError, match=r"nope\.png"):
        load_portraits([tmp_path / "nope.png"])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"junk\.png: not a readable image"):
        load_portraits([junk])


def test_save_image_round_trip_and_value_checks(tmp_path):
    pixels = _gradient_rgb(6)
    save_image(tmp_path / "out/u8.png", pixels)  # parent folder is created
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out/u8.png")), pixels)
    save_image(tmp_path / "f.png", pixels / 255.0)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")), pixels)
    out_of_range = np.full((4, 4, 3), 0.5)
    out_of_range[0, 0, 0], out_of_range[1, 1, 1] = -0.1, 1.0
    with pytest.raises(ValueError, match=r"range \[-0\.1, 1\]"):
        save_image(tmp_path / "bad.png", out_of_range)
    with pytest.raises(ValueError, match="non-finite"):
        save_image(tmp_path / "bad.png", np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        save_image(tmp_path / "bad.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match="PNG only"):
        save_image(tmp_path / "bad.jpg", pixels)
    assert not (tmp_path / "bad.png").exists()


def test_gif_has_all_frames_and_loops(tmp_path):
    t = np.linspace(0, 1, 5, dtype=np.float32)
    frames = np.broadcast_to(t[:, None, None, None], (5, 12, 20, 3)).copy()  # distinct frames
    path = tmp_path / "clip.gif"
    write_video(path, frames, fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (20, 12)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 100
        gif.seek(4)
        np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), 255)


def test_mp4_writes_or_explains_the_missing_plugin(tmp_path):
    frames = np.zeros((3, 16, 16, 3), np.uint8)
    path = tmp_path / "clip.mp4"
    if HAS_FFMPEG:
        import imageio_ffmpeg

        write_video(path, frames, fps=25)
        assert path.read_bytes()[4:8] == b"ftyp"  # ISO media container
        assert imageio_ffmpeg.count_frames_and_secs(str(path))[0] == 3
    else:
        with pytest.raises(ValueError, match=r"pip install imageio-ffmpeg.*\.gif works"):
            write_video(path, frames, fps=25)
        assert not path.exists()


def test_video_bad_input(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(ValueError, match=r"unknown video type '\.avi'"):
        write_video(tmp_path / "x.avi", frames)
    with pytest.raises(ValueError, match=r"frames values must lie in \[0,1\], got range \[0, 1\.5\]"):
        write_video(tmp_path / "x.gif", np.concatenate([frames, np.full((1, 8, 8, 3), 1.5)]))
    with pytest.raises(ValueError, match=r"\[T,H,W,3\]"):
        write_video(tmp_path / "x.gif", frames[0])
    with pytest.raises(ValueError, match="dtype int64"):
        write_video(tmp_path / "x.gif", frames.astype(np.int64))
    assert not (tmp_path / "x.gif").exists()


def test_image_grid_layout():
    tiles = [[np.full((2, 3, 3), 10 * r + c, np.uint8) for c in range(4)] for r in range(2)]
    expected = np.zeros((4, 12, 3), np.uint8)
    for r in range(2):
        for c in range(4):
            expected[2 * r : 2 * r + 2, 3 * c : 3 * c + 3] = 10 * r + c
    np.testing.assert_array_equal(image_grid(tiles), expected)


def test_image_grid_rejects_mismatched_tiles():
    a = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(ValueError, match=r"tile \(1,0\) is \[3, 2, 3\]"):
        image_grid([[a, a], [np.zeros((3, 2, 3), np.float32), a]])
    with pytest.raises(ValueError, match="row 1 has 1 tiles, row 0 has 2"):
        image_grid([[a, a], [a]])
    with pytest.raises(ValueError, match="at least one row"):
        image_grid([])
