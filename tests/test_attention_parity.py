"""Thinker logits parity with transformers (fp32 ≤ 1e-4, as tests/test_thinker_media.py) with the blockwise
attention forced in the decoder and both towers (small tiles, so every attention spans several), one case
per input kind: text (left-padded batch), image, video with audio-in-video, audio."""

from __future__ import annotations

import numpy as np
import pytest

from omniagent_jax.model.attention import DEFAULT, AttentionImpl, use_attention

torch_ref = pytest.importorskip("torch_ref")
from test_decoder import left_padded_batch  # noqa: E402
from test_thinker_media import build_case, reference_logits  # noqa: E402

BLOCKWISE = AttentionImpl("blockwise", block_q=8, block_k=16)


@pytest.fixture(scope="module")
def blockwise_pair(reference_pairs):
    ref, ours, _ = reference_pairs("tiny.yaml")
    use_attention(ours, BLOCKWISE)
    yield ref, ours
    use_attention(ours, DEFAULT)  # the session's model is shared with the other parity tests


def test_use_attention_reaches_every_attention(blockwise_pair):
    _, ours = blockwise_pair
    layers = [ours.model.layers[0].self_attn, ours.visual.blocks[0].attn, ours.audio_tower.layers[0].self_attn]
    assert [m.attention_impl for m in layers] == [BLOCKWISE] * 3


def test_text_parity_blockwise(blockwise_pair):
    ref, ours = blockwise_pair
    ids, mask = left_padded_batch()
    want = torch_ref.reference_logits(ref, ids, mask)
    got = np.asarray(ours(ids, mask))
    assert np.abs(got - want)[mask == 1].max() <= 1e-4


@pytest.mark.parametrize("case", ["image+text", "video+audio_in_video", "audio+text"])
def test_media_parity_blockwise(blockwise_pair, case):
    ref, ours = blockwise_pair
    ids, mask, inputs, aiv = build_case(case, ref)
    want = reference_logits(ref, ids, mask, inputs, aiv)
    got = np.asarray(ours(ids, mask, use_audio_in_video=aiv, **inputs))
    diff = np.abs(got - want)[mask == 1]
    assert diff.max() <= 1e-4, f"{case}: max |Δlogit| {diff.max():.3g}"
