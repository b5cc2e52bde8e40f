"""contrastive_jax: contrastive pretraining in JAX/Flax (see README.md and DESIGN)."""

__version__ = "0.1.0"
