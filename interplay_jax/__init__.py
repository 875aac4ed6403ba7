"""interplay_jax: pre-training, mid-training and GRPO of reasoning LMs on synthetic math, in JAX."""

__version__ = "0.1.0"
