"""The toy thinker's towers, frozen at their random init, already separate what the toy world asks about:
a linear probe on their outputs tells the squares' colours and sizes and the tones' pitches apart on
held-out examples (docs/toy.md §3), so the decoder can learn perception without training the towers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omniagent_jax.model import Thinker
from omniagent_jax.model.config import REPO_CONFIGS, load_config
from omniagent_jax.processing.audio import extract_features
from omniagent_jax.processing.layout import audio_token_count
from omniagent_jax.processing.vision import process_images
from omniagent_jax.toy import render, world

GOAL = 0.95


@pytest.fixture(scope="module")
def towers():
    config = load_config(REPO_CONFIGS / "toy" / "thinker.yaml")
    return Thinker(config, dtype=jnp.float32, rngs=nnx.Rngs(0))


def probe_accuracy(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out accuracy of a ridge-regression one-vs-rest linear probe (half the examples train it)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    train, test = order[: len(order) // 2], order[len(order) // 2 :]
    x = (features - features[train].mean(0)) / (features[train].std(0) + 1e-6)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    classes = np.unique(labels)
    y = (labels[:, None] == classes[None]).astype(np.float64) * 2 - 1
    a = x[train]
    w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ y[train])
    return float(np.mean(classes[np.argmax(x[test] @ w, axis=1)] == labels[test]))


def square_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``n`` toy frames with one lit square each (random colour, size, cell, background and time), and their labels."""
    rng = np.random.default_rng(seed)
    images, colours, sizes = [], [], []
    for i in range(n):
        k = int(rng.integers(0, 596 * world.FPS))  # the frame index: when in a 600-s video (the background drifts)
        colour, size = str(rng.choice(list(world.COLOURS))), int(rng.choice(world.SIZES))
        ev = world.Event(colour, size, int(rng.integers(4)), k / world.FPS, k / world.FPS + 1, "low")
        task = world.Task("test", i, int(rng.integers(1 << 30)), 600, "TR", "", (), "[[0, 1]]", (ev,), 0)
        images.append(render.frame(task, k))
        colours.append(ev.colour)
        sizes.append(ev.size)
    return images, np.array(colours), np.array(sizes)


def test_vision_tower_outputs_separate_colours_and_sizes(towers):
    images, colours, sizes = square_images(400)
    pixels, grids = process_images(images)
    tokens = np.asarray(towers.encode_images(pixels, grids))  # 4 per image (one per cell of the 2x2 grid)
    features = tokens.reshape(len(images), 4, -1).sum(axis=1)  # the frame's tokens summed: which cell holds the square drops out
    assert probe_accuracy(features, colours) >= GOAL
    assert probe_accuracy(features, sizes) >= GOAL
    # A probe cannot tell apart what the towers do not see: labels shuffled against the images stay near chance.
    assert probe_accuracy(features, np.random.default_rng(2).permutation(sizes)) < 0.5


def test_audio_tower_outputs_separate_pitches(towers):
    rng = np.random.default_rng(1)
    waves, pitches = [], []
    for _ in range(300):
        pitch = str(rng.choice(list(world.PITCHES)))
        t = np.arange(world.AUDIO_RATE) / world.AUDIO_RATE
        amplitude = rng.uniform(0.1, 0.4)
        tone = amplitude * np.sin(2 * np.pi * world.PITCHES[pitch] * t + rng.uniform(0, 2 * np.pi))
        waves.append((tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32))
        pitches.append(pitch)
    features, mask = extract_features(waves)
    tokens = np.asarray(towers.encode_audios(features, mask))
    per = audio_token_count(int(mask[0].sum()))
    assert probe_accuracy(tokens.reshape(len(waves), per * tokens.shape[-1]), np.array(pitches)) >= GOAL
