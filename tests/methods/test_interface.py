"""The method interface: every registered method declares the hooks that the step, fsdp,
gradient caching and the evaluators rely on, an unknown name is refused naming the choices, and
a fake method declared through `methods.Method` alone (no module of the package) trains through
train_step.build_program with its hooks called, and without them."""

import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from contrastive_jax import config_defaults, losses, methods, train_step
from contrastive_jax.methods import common
from contrastive_jax.parallel import fsdp, grad_cache
from contrastive_jax.parallel.layout import Layout

from support import synthetic_batches, tiny_config

# README's methods section and fsdp's / grad_cache's refusals: the losses split at the embeddings.
SPLIT_AT_EMBEDDINGS = {"simclr", "supcon", "simsiam", "clip", "siglip"}
IMAGE_TEXT = {"clip", "siglip"}
STEPS = 3


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_each_registered_method_declares_itself_under_its_name(name):
    method = methods.get(name)
    assert isinstance(method, methods.Method) and method.name == name


def test_an_unknown_method_is_refused_naming_every_choice():
    with pytest.raises(ValueError, match="unknown method 'simclr_v9'") as refusal:
        methods.get("simclr_v9")
    assert all(repr(name) in str(refusal.value) for name in methods.METHODS)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_fsdp_and_gradient_caching_take_exactly_the_methods_with_loss_parts(name):
    method = methods.get(name)
    assert (method.loss_parts is not None) == (name in SPLIT_AT_EMBEDDINGS)
    config = config_defaults.base(name)
    config.parallel, config.grad_cache_chunks = "fsdp", 2
    for check in (fsdp.validate, grad_cache.validate):
        if name in SPLIT_AT_EMBEDDINGS:
            check(config, method, 8)
        else:
            with pytest.raises(ValueError, match=repr(name)):
                check(config, method, 8)


@pytest.mark.parametrize("name", list(methods.METHODS))
def test_image_text_methods_read_pairs_and_embed_both_towers(name):
    method = methods.get(name)
    assert method.image_text == (name in IMAGE_TEXT)
    assert (method.embed_images is not None) == (method.embed_texts is not None) == (
        name in IMAGE_TEXT)
    keys = set(method.batch_shapes(config_defaults.base(name), 2))
    if name in IMAGE_TEXT:
        assert keys == {"image", "text"}
    else:
        assert {"view1", "view2", "label"} <= keys


def test_an_image_text_method_without_its_towers_is_refused():
    simclr = methods.get("simclr")
    with pytest.raises(ValueError, match="needs embed_images and embed_texts"):
        methods.Method(name="pairs", build_model=simclr.build_model,
                       init_variables=simclr.init_variables, batch_shapes=simclr.batch_shapes,
                       loss_fn=simclr.loss_fn, encoder_features=simclr.encoder_features,
                       image_text=True)


class TinyEmbedder(nn.Module):
    """The fake method's network: a linear embedding of the flattened image, then a linear map
    (which the hooked fake freezes)."""

    @nn.compact
    def __call__(self, images, train):
        del train
        features = nn.Dense(8, name="encoder")(images.reshape(images.shape[0], -1))
        return nn.Dense(8, name="head")(features)


def build_tiny_model(config, num_classes, axis_name):
    del config, num_classes, axis_name
    return TinyEmbedder()


def init_tiny_variables(model, config, rng):
    size = config.data.image_size
    return model.init(rng, jnp.zeros((1, size, size, 3)), train=False)


def tiny_loss_fn(model, config, params, state, batch, rng, axis_name):
    """NT-Xent of the two views' embeddings over all devices; no state changes."""
    del state, rng
    z1, z2 = (model.apply({"params": params}, batch[view], train=True)
              for view in ("view1", "view2"))
    return losses.nt_xent(z1, z2, config.loss.temperature, axis_name=axis_name), ({}, {})


def tiny_features(model):
    return lambda variables, images: model.apply(variables, images, train=False)


def refuse_hot_temperature(config):
    if config.loss.temperature > 1:
        raise ValueError("fake: config.loss.temperature must be <= 1")


def update_counter(config, variables, rng):
    del config, variables, rng
    return {"updates": jnp.zeros((), jnp.int32)}


def count_updates(config, state):
    del config
    return state.replace(extra={"updates": state.extra["updates"] + 1})


def freeze_head(config, params):
    del config
    return {name: jax.tree.map(lambda _: name == "head", tree) for name, tree in params.items()}


BARE = methods.Method(name="fake", build_model=build_tiny_model,
                      init_variables=init_tiny_variables,
                      batch_shapes=common.two_view_batch_shapes, loss_fn=tiny_loss_fn,
                      encoder_features=tiny_features)
HOOKED = methods.Method(name="fake", build_model=build_tiny_model,
                        init_variables=init_tiny_variables,
                        batch_shapes=common.two_view_batch_shapes, loss_fn=tiny_loss_fn,
                        encoder_features=tiny_features, validate=refuse_hot_temperature,
                        init_extra=update_counter, after_update=count_updates,
                        frozen_params=freeze_head)


@pytest.fixture
def register(monkeypatch):
    """Registers a `Method` as "fake": a module that declares it and its registry line."""

    def registered(method):
        module = types.ModuleType("fake_method")
        module.METHOD = method
        monkeypatch.setitem(sys.modules, "fake_method", module)
        monkeypatch.setitem(methods.METHODS, "fake", "fake_method")
        return tiny_config("fake")

    return registered


def train_steps(config):
    """(the host state before, after `STEPS` steps of build_program's step, the losses)."""
    layout = Layout.from_config(config)
    program = train_step.build_program(config, 10, layout)
    initial = jax.device_get(program.init_state())
    state = layout.place_state(initial, program.state_shardings)
    rng = layout.replicate(jax.random.PRNGKey(1))
    step_losses = []
    for batch in synthetic_batches(config, STEPS):
        state, metrics = program.step(state, layout.to_devices(batch), rng)
        step_losses.append(float(layout.unreplicate(metrics)["loss"]))
    return initial, jax.device_get(layout.unreplicate(state)), step_losses


def test_a_method_with_only_the_required_functions_trains(register):
    config = register(BARE)
    train_step.validate(config)
    initial, final, step_losses = train_steps(config)
    assert np.all(np.isfinite(step_losses)) and int(final.step) == STEPS
    assert final.extra == {} and final.batch_stats == {}
    for name in ("encoder", "head"):
        assert not np.allclose(final.params[name]["kernel"], initial.params[name]["kernel"])
    config.grad_cache_chunks = 2
    with pytest.raises(ValueError, match="method 'fake' has no loss over embeddings"):
        train_step.validate(config)


def test_a_methods_declared_hooks_are_what_the_step_calls(register):
    config = register(HOOKED)
    train_step.validate(config)
    initial, final, _ = train_steps(config)
    assert int(final.extra["updates"]) == STEPS
    np.testing.assert_array_equal(final.params["head"]["kernel"], initial.params["head"]["kernel"])
    assert not np.allclose(final.params["encoder"]["kernel"], initial.params["encoder"]["kernel"])
    config.loss.temperature = 2.0
    with pytest.raises(ValueError, match="fake: config.loss.temperature must be <= 1"):
        train_step.validate(config)
