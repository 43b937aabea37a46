"""Atomic writes: a failed write (a full disk, an error half-way) leaves the previous file intact
and no temporary file behind; the writers of avatars, images and videos go through it."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from flexavatar_jax import files


def _disk_full_after(n_bytes: int):
    def write(f):
        f.write(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "sub" / "a.bin"
    files.write_atomic(path, b"first version")
    with pytest.raises(OSError) as info:
        files.write_atomic(path, _disk_full_after(1000))
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"first version"
    assert os.listdir(path.parent) == ["a.bin"]  # the temporary file is gone


def test_text_bytes_and_suffix(tmp_path):
    files.write_atomic(tmp_path / "t.json", '{"a": 1}')
    files.write_atomic(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "t.json").read_text() == '{"a": 1}' and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    tmp = files.temporary_sibling(tmp_path / "clip.mp4")
    assert tmp.endswith(".mp4") and os.path.dirname(tmp) == str(tmp_path)  # the suffix picks the encoder
    with pytest.raises(ValueError, match="whole files"):
        with files.atomic_open(tmp_path / "x", "a"):
            pass


def test_writers_keep_the_previous_file_on_a_full_disk(tmp_path, monkeypatch):
    """save_image, write_video (GIF) and save_motion with the disk filling up mid-write."""
    from PIL import Image

    from flexavatar_jax.data import driving, media

    image_path, video_path, motion_path = tmp_path / "a.png", tmp_path / "a.gif", tmp_path / "m.npz"
    media.save_image(image_path, np.zeros((4, 4, 3)))
    media.write_video(video_path, np.zeros((2, 4, 4, 3)), fps=5)
    driving.save_motion(motion_path, np.zeros((2, 3)), np.zeros((2, 15)), np.zeros((2, 3)))
    before = {p: p.read_bytes() for p in (image_path, video_path, motion_path)}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    monkeypatch.setattr(np, "savez", full)
    for write in (lambda: media.save_image(image_path, np.ones((4, 4, 3))),
                  lambda: media.write_video(video_path, np.ones((2, 4, 4, 3)), fps=5),
                  lambda: driving.save_motion(motion_path, np.ones((2, 3)), np.zeros((2, 15)), np.zeros((2, 3)))):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(os.listdir(tmp_path)) == ["a.gif", "a.png", "m.npz"]


def test_read_npz_returns_the_arrays_and_names_what_is_wrong(tmp_path):
    read_npz = files.read_npz
    good = tmp_path / "good.npz"
    np.savez(good, a=np.arange(3), b=np.eye(2))
    got = read_npz(good, "motion file", "motion")
    assert sorted(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"], np.arange(3))
    with pytest.raises(FileNotFoundError, match=r"avatar file not found: .*absent\.npz"):
        read_npz(tmp_path / "absent.npz", "avatar file", "avatar")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"corrupt\.npz: not a readable motion \.npz"):
        read_npz(corrupt, "motion file", "motion")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, obj=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"pickled\.npz: not a readable avatar \.npz"):
        read_npz(pickled, "avatar file", "avatar")
