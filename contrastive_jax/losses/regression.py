"""The losses without negatives, regressing one view's prediction onto the other view's
target: SimSiam's negative cosine and BYOL's normalised squared error. The stop-gradient on the
target is the method's."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive_jax.losses.common import l2_normalize

Array = jax.Array


def negative_cosine(prediction: Array, target: Array) -> Array:
    """SimSiam's D(p, z) (Chen & He 2021, eq. 1): the mean over rows of -cos(p_i, z_i).

    No stop-gradient here: the method applies it to the target. Pointwise per pair, so under a
    named axis the pmean of per-device means is the global mean.
    """
    return -jnp.mean(jnp.sum(l2_normalize(prediction) * l2_normalize(target), axis=-1))


def byol_loss(prediction: Array, target: Array) -> Array:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): the mean over rows of
    ||p_i/|p_i| - z_i/|z_i|||^2 = 2 - 2 cos(p_i, z_i).

    No stop-gradient here: the target comes from the EMA network, which the method keeps out of
    the gradient. Pointwise per pair, so under a named axis the pmean of per-device means is the
    global mean.
    """
    return 2.0 + 2.0 * negative_cosine(prediction, target)
