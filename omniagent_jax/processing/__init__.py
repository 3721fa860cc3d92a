"""Qwen-compatible preprocessing: tokenizer, chat template, media features, placeholder expansion."""

from omniagent_jax.processing import tokens

__all__ = ["tokens"]
