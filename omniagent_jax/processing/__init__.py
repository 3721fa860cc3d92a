"""Qwen-compatible preprocessing: tokenizer, chat template, media features, placeholder expansion."""

from omniagent_jax.processing import tokens
from omniagent_jax.processing.processor import OmniProcessor, ProcessorSettings

__all__ = ["OmniProcessor", "ProcessorSettings", "tokens"]
