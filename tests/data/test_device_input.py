"""`data.augment_on = "device"`: the split kept on the devices, batches gathered by index and
augmented there. Checked against numpy and one-device computations on the 8 simulated devices,
and end to end: pmap == shard_map, and a resumed run equals an uninterrupted one."""

import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import PartitionSpec as P

from contrastive_jax import config_checks, parallel, train, train_step
from contrastive_jax.data import sources as data_sources, device_input, input_pipeline
from contrastive_jax.augment import jnp_ops, spec
from contrastive_jax.parallel.layout import Layout
from test_input_pipeline import tfds_dir  # noqa: F401  (a fixture: a tiny prepared TFDS set)
from support import assert_trees_equal, final_params, tiny_config


def _data_config(**overrides):
    config = tiny_config().data
    config.synthetic_num_examples = 100
    config.update(overrides)
    return config


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_gather_rows_equals_numpy_take(kind):
    mesh = parallel.make_mesh()
    table = np.random.default_rng(0).integers(0, 256, (8 * 5, 3, 2), np.uint8)
    indices = np.random.default_rng(1).integers(0, 40, 16).astype(np.int32)
    gather = parallel.wrap(lambda shard, idx: device_input.gather_rows(shard, idx, "data"), kind,
                           mesh, in_specs=(P("data"), P()), out_specs=P("data"))
    out = gather(parallel.host_batch_to_devices(table, kind, mesh),
                 parallel.replicate(indices, kind, mesh))
    np.testing.assert_array_equal(np.asarray(out).reshape(16, 3, 2), table[indices])


def test_global_order_visits_each_example_once_per_epoch():
    order = device_input.GlobalOrder(10, seed=3)
    epochs, indices = zip(*(order.batch(step, 4) for step in range(5)))
    epochs, indices = np.concatenate(epochs), np.concatenate(indices)
    np.testing.assert_array_equal(epochs, np.arange(20) // 10)
    assert sorted(indices[:10]) == sorted(indices[10:20]) == list(range(10))
    assert not np.array_equal(indices[:10], indices[10:20])
    fresh = device_input.GlobalOrder(10, seed=3)  # No state carried between steps.
    np.testing.assert_array_equal(fresh.batch(3, 4)[1], indices[12:16])
    assert not np.array_equal(device_input.GlobalOrder(10, seed=4).batch(0, 10)[1], indices[:10])


def _batches(kind, data_config, images, labels, start_step, count, batch_size=32):
    layout = Layout(kind, parallel.make_mesh())
    split = device_input.ResidentSplit(images, labels, layout)
    stream = device_input.resident_batches(data_config, split, global_batch_size=batch_size,
                                           seed=3, start_step=start_step, layout=layout)
    flat = lambda x: np.asarray(x).reshape(batch_size, *x.shape[2 if kind == "pmap" else 1:])
    return [jax.tree.map(flat, next(stream)) for _ in range(count)]


def test_resident_batches_equal_one_device_views_under_both_wrappers():
    data_config = _data_config(solarize_prob=0.3)
    images, labels = device_input.load_split(data_config, "train")
    by_kind = {kind: _batches(kind, data_config, images, labels, 0, 4)
               for kind in ("pmap", "shard_map")}
    order = device_input.GlobalOrder(100, seed=3)
    specs = spec.view_specs(data_config)
    views = jax.jit(lambda x, k: jnp_ops.two_views(x, k, specs))
    for step in range(4):
        epochs, indices = order.batch(step, 32)
        view1, view2 = views(images[indices], jnp_ops.example_keys(3, epochs, indices))
        for kind, batches in by_kind.items():
            np.testing.assert_array_equal(batches[step]["label"], labels[indices])
            np.testing.assert_allclose(batches[step]["view1"], view1, atol=1e-5, err_msg=kind)
            np.testing.assert_allclose(batches[step]["view2"], view2, atol=1e-5, err_msg=kind)


def test_resident_batches_resume_at_any_step():
    data_config = _data_config()
    images, labels = device_input.load_split(data_config, "train")
    uninterrupted = _batches("shard_map", data_config, images, labels, 0, 5)
    resumed = _batches("shard_map", data_config, images, labels, 3, 2)
    for a, b in zip(uninterrupted[3:], resumed):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_load_split_reads_every_image_of_a_tfds_set(tfds_dir):  # noqa: F811
    config = _data_config(source="tfds:contrastive_jax_tiny:1.0.0", data_dir=str(tfds_dir),
                          image_size=8)
    images, labels = device_input.load_split(config, "train")
    np.testing.assert_array_equal(np.sort(labels), np.arange(12))
    np.testing.assert_array_equal(images[:, 0, 0, 0], 20 * labels)  # Example i: colour 20 i.
    assert device_input.split_nbytes(config, "train") == images.nbytes
    assert device_input.fits_on_devices(config)
    assert not device_input.fits_on_devices(ml_collections.ConfigDict(
        {**config.to_dict(), "device_resident_max_mb": 0}))


def test_images_of_several_sizes_are_refused_with_the_way_out(tmp_path):
    for name, size in [("a.jpg", 8), ("b.jpg", 12)]:
        path = tmp_path / "train" / "c0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(path), tf.io.encode_jpeg(tf.zeros([size, size, 3], tf.uint8)))
    with pytest.raises(data_sources.DataError, match="device_resident_max_mb=0"):
        device_input.load_split(_data_config(source=f"folder:{tmp_path}"), "train")


def _device_config(**overrides):
    return tiny_config(**{"data.augment_on": "device", "eval_every": -1, **overrides})


def test_training_with_device_views_resumes_exactly_under_the_other_wrapper(tmp_path):
    """A shard_map run of 4 steps, and the same run resumed from its step-2 checkpoint under
    pmap, end with the same parameters: the views depend on the step alone, and the two
    wrappers compute the same step."""
    uninterrupted = str(tmp_path / "uninterrupted")
    train.train_and_evaluate(_device_config(parallel="shard_map"), uninterrupted)
    resumed = str(tmp_path / "resumed")
    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "4"))
    assert final_params(resumed)[0] == 2
    train.train_and_evaluate(_device_config(parallel="pmap"), resumed)
    step_a, params_a = final_params(resumed)
    step_b, params_b = final_params(uninterrupted)
    assert step_a == step_b == 4
    assert_trees_equal(params_a, params_b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method,value,message", [
    ("simclr", "gpu", "augment_on must be one of"),
    ("clip", "device", "reads image-text pairs"),
])
def test_bad_augment_on_is_refused(tmp_path, method, value, message):
    config = tiny_config(method, **{"data.augment_on": value})
    with pytest.raises(ValueError, match=message):
        train_step.validate(config_checks.resolve_steps(config, 64))


@pytest.mark.parametrize("kind", ["pmap", "shard_map"])
def test_prefetch_keeps_order_and_stays_two_batches_ahead(kind):
    mesh = parallel.make_mesh()
    pulled = []

    def host_batches():
        for k in range(6):
            pulled.append(k)
            yield {"x": np.full((16, 2), k, np.float32)}

    stream = parallel.prefetch_to_devices(host_batches(), kind, mesh, size=2)
    for k in range(6):
        batch = next(stream)
        assert len(pulled) == min(k + 3, 6)  # This batch and the two after it.
        np.testing.assert_array_equal(np.asarray(batch["x"]).reshape(16, 2), k)
        assert batch["x"].sharding == parallel.host_batch_to_devices(
            {"x": np.zeros((16, 2), np.float32)}, kind, mesh)["x"].sharding
    assert next(stream, None) is None


def _host_crop_batches(kind, data_config, start_step, count, batch_size=32):
    stream = device_input.train_batches(data_config, global_batch_size=batch_size, seed=3,
                                        start_step=start_step,
                                        layout=Layout(kind, parallel.make_mesh()))
    flat = lambda x: np.asarray(x).reshape(batch_size, *x.shape[2 if kind == "pmap" else 1:])
    return [jax.tree.map(flat, next(stream)) for _ in range(count)]


def test_a_split_too_large_for_the_devices_is_cropped_on_the_host_coloured_on_the_devices():
    """With the colour changes off, colouring on the devices is the identity: the batches are
    the host path's views (rounded to uint8), in its order, under both wrappers. With grayscale
    always on, every view comes out gray."""
    plain = _data_config(device_resident_max_mb=0, color_strength=0.0, grayscale_prob=0.0)
    assert not device_input.fits_on_devices(plain)
    host = input_pipeline.train_iterator(plain, global_batch_size=32, seed=3, start_step=1,
                                         process_index=0, process_count=1)
    expected = [next(host) for _ in range(2)]
    for kind in ("pmap", "shard_map"):
        for got, want in zip(_host_crop_batches(kind, plain, 1, 2), expected):
            np.testing.assert_array_equal(got["label"], want["label"])
            for view in ("view1", "view2"):
                np.testing.assert_allclose(got[view], want[view], atol=0.5 / 255 + 1e-6,
                                           err_msg=kind)
    gray = _host_crop_batches("shard_map", _data_config(device_resident_max_mb=0,
                                                        grayscale_prob=1.0), 1, 1)[0]
    for view in ("view1", "view2"):
        assert np.ptp(gray[view], axis=-1).max() < 1e-6
        assert np.abs(gray[view] - expected[0][view]).max() > 0.1


def test_host_crops_coloured_on_the_devices_resume_at_any_step():
    data_config = _data_config(device_resident_max_mb=0, solarize_prob=0.5)
    uninterrupted = _host_crop_batches("shard_map", data_config, 0, 4)
    resumed = _host_crop_batches("shard_map", data_config, 3, 1)
    jax.tree.map(np.testing.assert_array_equal, uninterrupted[3], resumed[0])
