"""The PyTorch reference (transformers' Qwen2.5-Omni thinker) for parity tests: build a random
reference thinker from one of our configs and save it the way the release lays its files out."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

from omniagent_jax.model.config import ThinkerConfig


def hf_config(cfg: ThinkerConfig) -> Qwen2_5OmniThinkerConfig:
    return Qwen2_5OmniThinkerConfig(**cfg.to_hf_dict())


def build_reference(
    cfg: ThinkerConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Qwen2_5OmniThinkerForConditionalGeneration:
    """A random reference thinker. Norm weights are randomised too so that a swapped key cannot hide."""
    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(hf_config(cfg)).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.02)
    return model


def on_disk_state_dict(model: Qwen2_5OmniThinkerForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The tensors under their checkpoint names (no `thinker.` prefix), via `save_pretrained`."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        out: dict[str, torch.Tensor] = {}
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".safetensors"):
                with safe_open(os.path.join(tmp, name), framework="pt") as f:
                    for key in f.keys():
                        out[key] = f.get_tensor(key).clone()
    return out


def save_release_layout(
    model: Qwen2_5OmniThinkerForConditionalGeneration,
    path: str | os.PathLike,
    *,
    num_shards: int = 3,
    prefix: str = "thinker.",
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Writes `model-0000k-of-0000n.safetensors` shards + `model.safetensors.index.json` + a full Omni
    `config.json` (thinker settings nested under `thinker_config`), keys prefixed as in the release.
    `extra` tensors (e.g. fake `talker.*`) are written as given. Returns the written tensors by key."""
    os.makedirs(path, exist_ok=True)
    tensors = {prefix + k: v.contiguous() for k, v in on_disk_state_dict(model).items()}
    tensors.update(extra or {})
    keys = sorted(tensors)
    weight_map = {}
    total = 0
    for i, chunk in enumerate(np.array_split(np.array(keys, dtype=object), num_shards)):
        fname = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        save_file({k: tensors[k] for k in chunk}, os.path.join(path, fname), metadata={"format": "pt"})
        for k in chunk:
            weight_map[k] = fname
            total += tensors[k].numel() * tensors[k].element_size()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    thinker_cfg = model.config.to_dict()
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"architectures": ["Qwen2_5OmniForConditionalGeneration"], "model_type": "qwen2_5_omni",
                   "thinker_config": thinker_cfg, "enable_audio_output": False}, f, indent=2)
    return tensors


def reference_logits(model, input_ids: np.ndarray, attention_mask: np.ndarray, **inputs) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(input_ids, dtype=torch.long),
            attention_mask=torch.as_tensor(attention_mask, dtype=torch.long),
            **inputs,
        )
    return out.logits.float().numpy()
