"""Identity synthesis (`appearance.py`): the tables' sample layout, bitwise determinism under jit and
vmap, the feature mix over many identities, appearance properties of the per-Gaussian arrays, bad
input."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flexavatar_jax.data import appearance as app
from flexavatar_jax.head import uv as uvt
from flexavatar_jax.head.procedural import load_procedural_head

KEYS = ("shape", "colors", "wrinkles", "opacity", "hair_offset", "base_scale", "hair_style", "skin_tone", "beard")
NUM_MANY = 1000


@pytest.fixture(scope="module")
def model():
    return load_procedural_head()


@pytest.fixture(scope="module")
def tables16(model):
    return app.identity_tables(model, 16, 0.8)


@pytest.fixture(scope="module")
def tables32(model):
    return app.identity_tables(model, 32, 0.8)


def _single(tables, mix=app.FeatureMix()):
    return jax.jit(functools.partial(app.synthesize_identity, tables, mix))


def _batched(tables, mix=app.FeatureMix()):
    return jax.jit(jax.vmap(functools.partial(app.synthesize_identity, tables, mix)))


def _many(tables, mix=app.FeatureMix()):
    """Identities 0..NUM_MANY-1 of world seed 0 (numpy)."""
    out = _batched(tables, mix)(jnp.zeros(NUM_MANY, jnp.int32), jnp.arange(NUM_MANY, dtype=jnp.int32))
    return {k: np.asarray(v) for k, v in out.items()}


def _at_surface(tables, texel_map):
    """A [K,K,...] table map read at the surface samples."""
    return texel_map.reshape((-1,) + texel_map.shape[2:])[tables.texel_index[:tables.num_surface]]


@pytest.fixture(scope="module")
def synth32(tables32):
    return _single(tables32), _batched(tables32)


@pytest.fixture(scope="module")
def many16(tables16):
    return _many(tables16)


def _row(out, i):
    return {k: np.asarray(v[i]) for k, v in out.items()}


# --- tables ---------------------------------------------------------------------------------------


def test_tables_hold_the_sample_layout(model, tables16):
    t = tables16
    surface = uvt.sampling_grid(model, 16)
    n_s = t.num_surface
    assert n_s == len(surface) and t.num_gaussians == n_s + t.num_hair and t.num_hair > 0
    np.testing.assert_array_equal(t.samples.texel[:n_s], surface.texel)
    np.testing.assert_array_equal(t.samples.face[:n_s], surface.face)
    assert not t.samples.dense[:n_s].any() and t.samples.dense[n_s:].all()
    np.testing.assert_array_equal(t.texel_index, t.samples.texel[:, 0] * 16 + t.samples.texel[:, 1])
    # Hair candidates: exactly the surface texels some style covers; bald covers none.
    candidates = app.hair_region(model, 16, "long") | app.hair_region(model, 16, "fringe")
    hair_texel = t.samples.texel[n_s:]
    assert candidates[hair_texel[:, 0], hair_texel[:, 1]].all()
    assert t.num_hair == candidates[surface.texel[:, 0], surface.texel[:, 1]].sum()
    assert t.hair_masks.shape == (len(app.HAIR_STYLES), t.num_hair)
    assert not t.hair_masks[app.hair_style_index("bald")].any() and t.hair_masks[1:].any(axis=1).all()
    # The texel edge is capped at 3× its median (capping leaves the median unchanged).
    assert np.all(t.texel_edge > 0) and t.texel_edge.max() <= 3 * np.median(t.texel_edge) * (1 + 1e-6)
    assert t.p.shape == (16, 16, 3) and t.wrinkle_base.shape == (16, 16, len(app.WRINKLES))


def test_output_keys_shapes_and_dtypes(tables16):
    t = tables16
    shapes = jax.eval_shape(functools.partial(app.synthesize_identity, t, app.FeatureMix()), 0, 3)
    n, w = t.num_gaussians, len(app.WRINKLES)
    expected = {"shape": ((t.num_shape,), jnp.float32), "colors": ((n, 3), jnp.float32),
                "wrinkles": ((n, w), jnp.float32), "opacity": ((n,), jnp.float32),
                "hair_offset": ((n,), jnp.float32), "base_scale": ((n, 3), jnp.float32),
                "hair_style": ((), jnp.int32), "skin_tone": ((), jnp.float32), "beard": ((), jnp.float32)}
    assert set(shapes) == set(KEYS) == set(expected)
    for k, (shape, dtype) in expected.items():
        assert (shapes[k].shape, shapes[k].dtype) == (shape, dtype), k


def test_tables_and_mix_also_work_as_static_jit_arguments(tables16):
    static = jax.jit(app.synthesize_identity, static_argnums=(0, 1))(tables16, app.FeatureMix(), 0, 3)
    bound = jax.eval_shape(functools.partial(app.synthesize_identity, tables16, app.FeatureMix()), 0, 3)
    assert {k: (v.shape, v.dtype) for k, v in static.items()} == {k: (v.shape, v.dtype) for k, v in bound.items()}
    assert hash(tables16) == hash(tables16) and hash(app.FeatureMix()) == hash(app.FeatureMix())


# --- determinism ----------------------------------------------------------------------------------


def test_identity_is_bitwise_the_same_alone_in_any_batch_position_and_from_fresh_tables(model, synth32):
    single, batch = synth32
    ref = {k: np.asarray(v) for k, v in single(0, 5).items()}
    zeros = jnp.zeros(3, jnp.int32)
    first = _row(batch(zeros, jnp.array([5, 7, 9])), 0)
    last = _row(batch(zeros, jnp.array([1, 3, 5])), 2)
    by_seed = batch(jnp.array([1, 0, 2]), jnp.array([5, 5, 5]))  # a vmap over seeds
    fresh = _single(app.identity_tables(model, 32, 0.8))(0, 5)
    for name, other in (("batch position 0", first), ("batch position 2", last), ("seed batch", _row(by_seed, 1)),
                        ("fresh tables", fresh)):
        for k in KEYS:
            a, b = ref[k], np.asarray(other[k])
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{k} differs: {name}"
    # Other ids and other world seeds are other people.
    other_id = single(0, 6)
    for k in ("shape", "colors"):
        assert not np.array_equal(ref[k], np.asarray(other_id[k])), k
        assert not np.array_equal(ref[k], np.asarray(by_seed[k][0])), k
        assert not np.array_equal(ref[k], np.asarray(by_seed[k][2])), k


# --- the feature mix ------------------------------------------------------------------------------


def _assert_frequencies(counts, probs, what):
    """Observed frequencies within 4 binomial standard errors of `probs`."""
    freq = np.asarray(counts) / NUM_MANY
    probs = np.asarray(probs)
    se = np.sqrt(probs * (1 - probs) / NUM_MANY)
    assert np.all(np.abs(freq - probs) <= 4 * se + 1e-12), f"{what}: frequencies {freq}, configured {probs}"


def test_default_mix_is_followed_over_many_identities(many16):
    mix = app.FeatureMix()
    _assert_frequencies(np.bincount(many16["hair_style"], minlength=len(app.HAIR_STYLES)), mix.hair_style_probs,
                        "hair styles")
    beard = many16["beard"]
    assert np.isin(beard, np.float32(app.BEARD_STRENGTHS)).all()
    _assert_frequencies([np.sum(beard == np.float32(s)) for s in app.BEARD_STRENGTHS], mix.beard_probs, "beards")
    tone = many16["skin_tone"]
    lo, hi = mix.skin_tone_range
    sd = (hi - lo) / math.sqrt(12)  # of a uniform on [lo, hi]
    assert lo <= tone.min() and tone.max() <= hi
    assert tone.min() < lo + 0.02 * (hi - lo) and tone.max() > hi - 0.02 * (hi - lo)
    assert abs(tone.mean() - (lo + hi) / 2) < 4 * sd / math.sqrt(NUM_MANY)
    # Standard error of a sample std for a uniform (kurtosis 1.8): sd·sqrt(0.8 / (4n)).
    assert abs(tone.std() - sd) < 4 * sd * math.sqrt(0.8 / (4 * NUM_MANY))
    # Kolmogorov-Smirnov distance to the uniform CDF, critical value at a 1e-4 false alarm rate.
    x = np.sort((tone - lo) / (hi - lo))
    ks = max(np.max(np.arange(1, NUM_MANY + 1) / NUM_MANY - x), np.max(x - np.arange(NUM_MANY) / NUM_MANY))
    assert ks < math.sqrt(-0.5 * math.log(1e-4 / 2) / NUM_MANY), ks


def test_a_non_default_mix_is_followed_exactly(tables16):
    mix = app.FeatureMix(hair_style_probs=(1.0, 0.0, 0.0, 0.0), beard_probs=(0.0, 0.0, 1.0),
                         skin_tone_range=(0.2, 0.3))
    out = _many(tables16, mix)
    assert np.all(out["hair_style"] == app.hair_style_index("bald"))
    assert np.all(out["beard"] == np.float32(1.0))
    assert out["skin_tone"].min() >= np.float32(0.2) and out["skin_tone"].max() <= np.float32(0.3)
    assert np.all(out["opacity"][:, tables16.num_surface:] == 0)


def test_freckle_count_mix_is_followed(tables16, many16):
    """With the freckles switched off, an identity keeps bitwise the same surface colours exactly when
    its default draw had 0 freckles (moles are drawn identically in both mixes): that happens with
    the configured probability of a 0 count."""
    no_freckles = _many(tables16, app.FeatureMix(freckle_count_probs=(1.0, 0.0, 0.0, 0.0)))
    n_s = tables16.num_surface
    colors, plain = many16["colors"][:, :n_s], no_freckles["colors"][:, :n_s]
    unchanged = np.all(colors == plain, axis=(1, 2))
    p0 = app.FeatureMix().freckle_count_probs[0]
    _assert_frequencies([unchanged.sum()], [p0], "identities without freckles")
    # Freckles only darken, and only the skin around the face.
    assert np.all(colors <= plain)
    darkened = np.any(colors < plain, axis=(0, 2))
    near_face = np.linalg.norm(_at_surface(tables16, tables16.p)[:, None] - tables16.face_skin_points, axis=-1).min(1)
    assert darkened[_at_surface(tables16, tables16.face_skin)].mean() > 0.5
    assert np.all(near_face[darkened] < 0.02)


def test_spot_slots_follow_the_counts(tables16):
    """Exactly the requested freckles and moles darken the skin: at K=16 a spot (radius <= 3 mm)
    darkens its own centre texel only, so darkened texels = distinct centres."""
    points = jnp.asarray(_at_surface(tables16, tables16.p))
    face = _at_surface(tables16, tables16.face_skin)
    spots = jax.jit(lambda key, n_freckles, n_moles: app._spots(key, n_freckles, n_moles, points,
                                                                tables16.face_skin_points))
    darkened = []
    for i in range(20):
        key = jax.random.key(i)
        assert np.all(np.asarray(spots(key, 0, 0)) == 1)  # no spot: bitwise unchanged
        factor = np.asarray(spots(key, 10, 0))
        assert np.all(factor[~face] > 0.999)
        darkened.append(np.sum(factor < 0.9))
        moles = np.asarray(spots(key, 0, 3))
        assert 1 <= np.sum(moles < 0.9) <= 3 and np.all(moles[moles < 0.9] <= 0.6 + 1e-6)  # darkness >= 0.4
    # 10 centres drawn among the face texels: a few coincide now and then, never more than 10.
    assert max(darkened) == 10 and np.mean(darkened) > 8


# --- appearance properties ------------------------------------------------------------------------


def test_arrays_are_in_range_and_hair_follows_the_style(tables16, many16):
    n_s = tables16.num_surface
    colors, opacity, offset, wrinkles = (many16[k] for k in ("colors", "opacity", "hair_offset", "wrinkles"))
    assert np.all((colors >= 0) & (colors <= 1)) and np.all(np.isfinite(colors))
    assert np.all(opacity[:, :n_s] == np.float32(app.SKIN_OPACITY)) and np.all(offset[:, :n_s] == 0)
    assert np.all(wrinkles[:, n_s:] == 0) and np.all((wrinkles >= 0) & (wrinkles <= 1))
    assert np.all(many16["shape"].std(axis=0) > 0.5 * 0.8) and np.all(many16["shape"].std(axis=0) < 1.5 * 0.8)
    for style, name in enumerate(app.HAIR_STYLES):
        mine = many16["hair_style"] == style
        covered = opacity[mine, n_s:] > 0
        assert mine.any(), name
        if name == "bald":
            assert not covered.any()
        else:
            assert covered.any(axis=1).all(), name
            assert np.all(offset[mine, n_s:][covered] > 0.002), name
            assert np.all(offset[mine, n_s:][~covered] == 0), name
            # Covered exactly where the style's region is.
            np.testing.assert_array_equal(covered, np.broadcast_to(tables16.hair_masks[style], covered.shape))


def test_wrinkles_scale_with_age_and_stay_in_their_regions(tables16, many16):
    n_s = tables16.num_surface
    wrinkles = many16["wrinkles"][:, :n_s]
    base = _at_surface(tables16, tables16.wrinkle_base)
    face = _at_surface(tables16, tables16.face_skin)
    mouth = _at_surface(tables16, tables16.mouth_interior | tables16.teeth | tables16.tongue)
    shadow = app.WRINKLES.index("mouth_interior_shadow")
    lines = [i for i in range(len(app.WRINKLES)) if i != shadow]
    assert np.all(base[~face][:, lines] == 0) and np.all(wrinkles[:, ~face][..., lines] == 0)
    assert np.all((base[:, shadow] > 0) == mouth) and mouth.any()
    np.testing.assert_array_equal(wrinkles[..., shadow], np.broadcast_to(base[:, shadow], wrinkles.shape[:2]))
    # The wrinkle lines are the table's lines times one age per identity, uniform in AGE_RANGE.
    on = base[:, lines] > 1e-30  # above float32 subnormals, so the ratio is exact to rounding
    assert on.sum() > 10
    age = wrinkles[..., lines][:, on] / base[:, lines][on]
    np.testing.assert_allclose(age, age[:, :1] * np.ones_like(age), rtol=1e-5)
    lo, hi = app.AGE_RANGE
    assert np.all((age >= lo - 1e-6) & (age <= hi + 1e-6))
    assert age.min() < lo + 0.02 * (hi - lo) and age.max() > hi - 0.02 * (hi - lo)


def test_beards_darken_the_beard_zone_only(tables16, many16):
    no_beards = _many(tables16, app.FeatureMix(beard_probs=(1.0, 0.0, 0.0)))
    n_s = tables16.num_surface
    colors, plain = many16["colors"][:, :n_s], no_beards["colors"][:, :n_s]
    zone = _at_surface(tables16, tables16.beard_weight) > 0
    beard = many16["beard"]
    # Everything else is bitwise unchanged, and beardless identities entirely.
    np.testing.assert_array_equal(colors[:, ~zone], plain[:, ~zone])
    np.testing.assert_array_equal(colors[beard == 0], plain[beard == 0])
    core = _at_surface(tables16, tables16.beard_weight) > 0.3
    change = (colors[:, core].mean(-1) - plain[:, core].mean(-1)).mean(-1)  # luminance change per identity
    full, stubble = change[beard == 1.0], change[beard == np.float32(0.4)]
    # A beard blends towards the hair colour, so blond or grey beards on dark skin lighten it: darker
    # on average (median; a sign test at 3 standard errors for full beards), not always.
    assert np.median(full) < 0 and np.median(stubble) < 0
    assert np.mean(full < 0) > 0.5 + 3 * 0.5 / math.sqrt(len(full))
    assert np.median(np.abs(full)) > np.median(np.abs(stubble))  # a full beard changes more than stubble


def test_eyes_get_sclera_iris_and_pupil_colours(model, tables32, synth32):
    # The eyeball's front covers few texels: pupil texels exist at K=48, iris-only texels at K=32.
    tables48 = app.identity_tables(model, 48, 0.8)
    for t, ident in ((tables48, _single(tables48)(0, 5)), (tables32, synth32[0](0, 5))):
        colors = np.asarray(ident["colors"])[: t.num_surface]
        eye = _at_surface(t, t.left_eye | t.right_eye)
        angle = _at_surface(t, t.eye_angle)
        sclera = eye & (angle >= app.IRIS_ANGLE_RANGE[1])
        pupil = eye & (angle < app.PUPIL_ANGLE)
        iris = eye & (angle >= app.PUPIL_ANGLE) & (angle < app.IRIS_ANGLE_RANGE[0])
        assert sclera.any() and (pupil.any() if t is tables48 else iris.any())
        assert np.all(colors[sclera] == np.float32(app.SCLERA_COLOR))
        assert np.all(colors[pupil] == np.float32(app.PUPIL_COLOR)) and np.all(colors[pupil] < 0.05)
        assert not np.any(np.all(colors[iris] == np.float32(app.SCLERA_COLOR), -1))
        assert not np.any(np.all(colors[iris] == np.float32(app.PUPIL_COLOR), -1))


# --- bad input ------------------------------------------------------------------------------------


def test_identity_ids_are_checked():
    np.testing.assert_array_equal(app.check_identity_ids([0, 7, app.MAX_IDENTITY_ID - 1]),
                                  [0, 7, app.MAX_IDENTITY_ID - 1])
    assert app.check_identity_ids(np.int64(12)).dtype == np.int32
    for bad, shown in ((-1, "-1"), ([3, -4], "-4"), (2**31 - 1, "2147483647"), (np.array([5, 2**31]), "2147483648"),
                       (1.5, "1.5"), (np.array([1.0, 2.0]), "1.0"), (True, "True")):
        with pytest.raises(ValueError, match=shown):
            app.check_identity_ids(bad)


def test_synthesize_rejects_a_concrete_bad_id(tables16):
    with pytest.raises(ValueError, match="-3"):
        app.synthesize_identity(tables16, app.FeatureMix(), 0, -3)


def test_unknown_hair_style_raises(model):
    with pytest.raises(ValueError, match="mohawk.*bald.*short.*long.*fringe"):
        app.hair_style_index("mohawk")
    with pytest.raises(ValueError, match="mohawk"):
        app.hair_region(model, 16, "mohawk")


@pytest.mark.parametrize("field, value", [
    ("hair_style_probs", (0.2, 0.2, 0.2, 0.2)),  # sums to 0.8
    ("hair_style_probs", (0.5, 0.5, 0.5, -0.5)),  # a negative probability
    ("hair_style_probs", (0.5, 0.5)),  # wrong length
    ("beard_probs", (0.5, 0.5)),
    ("beard_probs", (float("nan"), 0.5, 0.5)),
    ("freckle_count_probs", (1.0, 0.0, 0.0, 1e-3)),
    ("skin_tone_range", (0.6, 0.4)),  # not ordered
    ("skin_tone_range", (-0.1, 0.5)),  # outside [0, 1]
    ("skin_tone_range", (0.5, 1.2)),
    ("skin_tone_range", (0.5,)),
])
def test_invalid_feature_mix_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"FeatureMix\.{field}.*{value[-1]}"):
        app.FeatureMix(**{field: value})


def test_negative_shape_scale_raises(model):
    with pytest.raises(ValueError, match="shape_scale.*-0.5"):
        app.identity_tables(model, 16, -0.5)
