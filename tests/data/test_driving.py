"""Driving motions (`HeadParams` with a leading frame axis): a synthetic identity's own frames,
motion files that round-trip or fail by name, VHAP's tracked-parameter layout."""

import numpy as np
import pytest

from flexavatar_jax.data import driving
from flexavatar_jax.data.synthetic import SyntheticConfig, SyntheticWorld
from flexavatar_jax.head import POSE_SIZE, HeadParams

FIELDS = ("shape", "expression", "global_pose", "neck_pose", "jaw_pose", "eyes_pose", "translation")


@pytest.fixture(scope="module")
def world():
    # The micro training config's world: 6 frames per clip, one clip per identity.
    return SyntheticWorld(SyntheticConfig(uv_resolution=32, image_size=32, frames_per_clip=6, clips_per_identity=1))


def _arrays(motion: HeadParams):
    """(expression [T,E], pose [T,POSE_SIZE], translation [T,3]) of a motion, as numpy."""
    return tuple(np.asarray(a) for a in (motion.expression, motion.pose_vector(), motion.translation))


def test_driving_sequence_is_the_identitys_own_frames(world):
    motion = driving.driving_sequence(world, 3, count=4, clip=0)
    ident = world.identity(3)
    for t in range(4):
        frame = ident.frame_params(0, t)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(motion, field)[t], np.asarray(getattr(frame, field)))
    with pytest.raises(ValueError, match="has 6 frames, asked for 7"):
        driving.driving_sequence(world, 3, count=7)
    with pytest.raises(ValueError, match=r"got clip=\d"):
        driving.driving_sequence(world, 3, clip=len(ident.clips))
    whole = driving.driving_sequence(world, 3)
    assert isinstance(whole, HeadParams) and whole.expression.shape[0] == len(ident.clips[0])
    assert driving.num_frames(whole) == len(ident.clips[0])


def test_take_frames(world):
    motion = driving.driving_sequence(world, 2)
    assert driving.take_frames(motion, None) is motion
    first = driving.take_frames(motion, 2)
    assert driving.num_frames(first) == 2
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(first, field), np.asarray(getattr(motion, field))[:2])
    for bad in (0, 7):
        with pytest.raises(ValueError, match=f"has 6 frames, asked for {bad}"):
            driving.take_frames(motion, bad)


def test_load_motion_round_trip_and_vhap_keys(tmp_path, world, procedural_head):
    e = procedural_head.num_expression
    motion = driving.driving_sequence(world, 2, count=5)
    expression, pose, translation = _arrays(motion)
    assert pose.shape == (5, POSE_SIZE)
    driving.save_motion(tmp_path / "m.npz", expression, pose, translation)
    loaded = driving.load_motion(tmp_path / "m.npz", e)
    for a, b in zip(_arrays(loaded), (expression, pose, translation)):
        np.testing.assert_array_equal(a, b)
    assert loaded.shape.shape == (5, 0)
    # VHAP's tracked-parameter layout of the same motion.
    np.savez(tmp_path / "vhap.npz", expr=expression, rotation=motion.global_pose, neck_pose=motion.neck_pose,
             jaw_pose=motion.jaw_pose, eyes_pose=motion.eyes_pose, translation=translation,
             shape=np.zeros(7, np.float32))
    vhap = driving.load_motion(tmp_path / "vhap.npz", e)
    for a, b in zip(_arrays(vhap), (expression, pose, translation)):
        np.testing.assert_array_equal(a, b)


def test_load_motion_rejects_bad_files_by_name(tmp_path, procedural_head):
    e = procedural_head.num_expression
    good = dict(expression=np.zeros((4, e)), pose=np.zeros((4, POSE_SIZE)), translation=np.zeros((4, 3)))
    cases = {
        "no_pose": ({k: v for k, v in good.items() if k != "pose"}, r"missing \['pose'\]"),
        "short_translation": (dict(good, translation=np.zeros((3, 3))), r"frame counts T.*'translation': 3"),
        "wrong_e": (dict(good, expression=np.zeros((4, e + 1))), rf"expression must be \[T,{e}\]"),
        "pose_14": (dict(good, pose=np.zeros((4, POSE_SIZE - 1))), rf"pose must be \[T,{POSE_SIZE}\]"),
        "nan": (dict(good, translation=np.full((4, 3), np.nan)), "translation has non-finite"),
        "empty": ({k: v[:0] for k, v in good.items()}, "0 frames"),
        "unrelated": (dict(foo=np.zeros(3)), "missing 'expression'"),
    }
    for name, (arrays, message) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=f"{name}.npz.*{message}"):
            driving.load_motion(path, e)
    with pytest.raises(FileNotFoundError):
        driving.load_motion(tmp_path / "absent.npz", e)
