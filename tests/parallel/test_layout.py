"""parallel.layout.Layout on the 8 simulated devices: built from config.parallel, it places host
data in its wrapper's form and reads it back unchanged, holds the state replicated or split as
the step expects, and converts states to and from a checkpoint's global arrays losslessly."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from contrastive_jax import parallel
from contrastive_jax.parallel.layout import Layout

from support import tiny_config

STATE = {"kernel": np.arange(64 * 3, dtype=np.float32).reshape(64, 3),
         "bias": np.arange(3, dtype=np.float32), "step": np.int32(5)}


def _layout(parallel_kind, **overrides):
    return Layout.from_config(tiny_config(parallel=parallel_kind, **overrides))


def test_from_config_chooses_the_wrapper_the_mesh_and_the_batchnorm_axis():
    for name, kind, axis in (("pmap", "pmap", parallel.AXIS),
                             ("shard_map", "shard_map", parallel.AXIS),
                             ("fsdp", "shard_map", None)):
        layout = _layout(name)
        assert (layout.kind, layout.bn_axis, layout.is_fsdp) == (kind, axis, name == "fsdp")
        assert list(layout.mesh.devices.flat) == jax.devices()
    assert _layout("fsdp", fsdp_size=4).fsdp_mesh().shape == {"data": 2, "fsdp": 4}


def test_an_unknown_parallel_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="config.parallel must be one of .*pmap.*fsdp"):
        _layout("ddp")


@pytest.mark.parametrize("name", ["pmap", "shard_map"])
def test_replicate_and_unreplicate_round_trip(name):
    layout = _layout(name)
    placed = layout.replicate(STATE)
    leading = (jax.local_device_count(),) if name == "pmap" else ()
    assert placed["kernel"].shape == leading + STATE["kernel"].shape
    jax.tree.map(np.testing.assert_array_equal, layout.unreplicate(placed), STATE)


@pytest.mark.parametrize("name", ["pmap", "shard_map"])
def test_a_wrapped_function_sees_each_device_s_rows_of_the_batch(name):
    """Each device sums its slice of a batch of row indices; the per-device values that come
    back are the sums of consecutive blocks of 2 rows, in device order."""
    layout = _layout(name)
    batch = np.arange(16, dtype=np.float32)
    block_sums = layout.wrap(lambda x: x.sum(keepdims=True), in_specs=(P(parallel.AXIS),),
                             out_specs=P(parallel.AXIS))(layout.to_devices(batch))
    np.testing.assert_array_equal(np.reshape(layout.per_device_values(block_sums), -1),
                                  batch.reshape(8, 2).sum(1))


def test_prefetch_yields_to_devices_of_every_batch_in_order():
    layout = _layout("shard_map")
    batches = [{"x": np.full((8,), i, np.float32)} for i in range(5)]
    got = [np.asarray(b["x"]) for b in layout.prefetch(iter(batches), size=2)]
    np.testing.assert_array_equal(np.stack(got), np.stack([b["x"] for b in batches]))


@pytest.mark.parametrize("name", ["pmap", "shard_map", "fsdp"])
def test_state_placement_and_checkpoint_form_are_lossless(name):
    layout = _layout(name)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          STATE)
    shardings = layout.state_shardings(shapes)
    placed = layout.place_state(STATE, shardings)
    kernel_spec = shardings["kernel"].spec
    assert kernel_spec == (P("fsdp", None) if name == "fsdp" else P())
    saved = layout.for_checkpoint(placed)
    assert saved["kernel"].shape == STATE["kernel"].shape  # Global arrays, as checkpoints hold.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(saved), STATE)
    if name != "fsdp":
        restored = layout.from_checkpoint(saved)
        jax.tree.map(np.testing.assert_array_equal, layout.unreplicate(restored), STATE)


def test_whole_gathers_fsdp_s_split_state_onto_every_device():
    layout = _layout("fsdp")
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                          STATE)
    split = layout.place_state(STATE, layout.state_shardings(shapes))
    assert split["kernel"].addressable_shards[0].data.shape == (8, 3)
    whole = layout.whole(split)
    assert whole["kernel"].addressable_shards[0].data.shape == (64, 3)
    jax.tree.map(np.testing.assert_array_equal, layout.unreplicate(whole), STATE)
