"""Checkpoints: restore onto another mesh, and fall back past a corrupt newest step."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from flexavatar_jax.config import MeshConfig
from flexavatar_jax.train import checkpoint as ckpt_lib
from flexavatar_jax.train import sharding


def _mesh(data, fsdp):
    return sharding.make_mesh(MeshConfig(data=data, fsdp=fsdp, model=1), jax.devices()[: data * fsdp])


def _state(mesh, value):
    w = jnp.arange(64.0).reshape(8, 8) + value
    return {"w": jax.device_put(w, NamedSharding(mesh, P("fsdp", None))),
            "step": jax.device_put(jnp.asarray(value, jnp.int32), NamedSharding(mesh, P()))}


def test_restore_onto_a_different_mesh(tmp_path):
    src = _mesh(2, 4)
    ck = ckpt_lib.Checkpointer(str(tmp_path), keep=2)
    ck.save(1, _state(src, 1), None, {"note": "a"}, force=True)
    ck.wait()
    dst = _mesh(1, 2)
    target = {"w": NamedSharding(dst, P(None, "fsdp")), "step": NamedSharding(dst, P())}
    abstract = ckpt_lib.abstract_like(jax.eval_shape(lambda: _state(src, 0)), target)
    step, state, config = ck.restore_latest(abstract, None)
    ck.close()
    assert step == 1 and config == {"note": "a"}
    assert state["w"].sharding.mesh.shape == dst.shape and state["w"].sharding.spec == P(None, "fsdp")
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(64.0).reshape(8, 8) + 1)


def test_corrupt_latest_falls_back_to_previous(tmp_path, capsys):
    mesh = _mesh(1, 1)
    ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
    for s in (1, 2):
        ck.save(s, _state(mesh, s), None, {"step": s}, force=True)
    ck.close()
    # Damage every array file of step 2's state (a write cut short).
    state_dir = tmp_path / "2" / "state"
    for f in state_dir.rglob("*"):
        if f.is_file() and f.suffix not in (".json",) and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    shutil.rmtree(state_dir / "d", ignore_errors=True)
    ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
    abstract = ckpt_lib.abstract_like(jax.eval_shape(lambda: _state(mesh, 0)),
                                      {"w": NamedSharding(mesh, P()), "step": NamedSharding(mesh, P())})
    step, state, config = ck.restore_latest(abstract, None)
    ck.close()
    assert step == 1 and int(state["step"]) == 1 and config == {"step": 1}
    assert "checkpoint step 2" in capsys.readouterr().out


def test_mesh_shape_errors():
    assert sharding.mesh_shape(MeshConfig(data=-1, fsdp=2, model=1), 8) == (4, 2, 1)
    for bad in (MeshConfig(data=-1, fsdp=-1, model=1), MeshConfig(data=3, fsdp=1, model=1),
                MeshConfig(data=0, fsdp=1, model=1)):
        try:
            sharding.mesh_shape(bad, 8)
        except ValueError as e:
            assert "mesh" in str(e)
        else:
            raise AssertionError(f"{bad} accepted")
