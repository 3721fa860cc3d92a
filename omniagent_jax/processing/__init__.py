"""Qwen-compatible preprocessing: tokenizer, chat template, media features, placeholder expansion."""

from omniagent_jax.processing import tokens

__all__ = ["tokens"]

from omniagent_jax.processing.processor import OmniProcessor, ProcessorSettings  # noqa: E402

__all__ += ["OmniProcessor", "ProcessorSettings"]
