"""TMRoPE `get_rope_index` against the reference's own implementation, on the worked example of
docs/model.md §2.1 and on random layouts (hypothesis): text, images, videos with/without audio-in-video,
audio, left padding, batch > 1. Token layouts are built with the reference's chunk scanner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniagent_jax.model.config import tiny
from omniagent_jax.model.tmrope import get_rope_index

torch_ref = pytest.importorskip("torch_ref")
import layouts  # noqa: E402

CFG = tiny()


@pytest.fixture(scope="module")
def reference():
    return torch_ref.build_reference(CFG, seed=0)


def compare(samples, ref, use_audio_in_video):
    ids, mask, image, video, spg, audio = layouts.batch(samples, ref, use_audio_in_video)
    as_t = lambda x, dt=torch.long: None if x is None else torch.tensor(x, dtype=dt)  # noqa: E731
    want_pos, want_delta = ref.model.get_rope_index(
        torch.as_tensor(ids), as_t(image), as_t(video), torch.as_tensor(mask), use_audio_in_video,
        as_t(audio), as_t(spg, torch.float32),
    )
    got_pos, got_delta = get_rope_index(
        ids, mask, CFG, image_grid_thw=image, video_grid_thw=video, video_second_per_grid=spg,
        audio_seqlens=audio, use_audio_in_video=use_audio_in_video,
    )
    want_pos = want_pos.numpy()
    valid = mask == 1
    assert np.array_equal(got_pos[:, valid], want_pos[:, valid]), "positions differ at real tokens"
    np.testing.assert_array_equal(got_delta, want_delta.numpy().reshape(-1))
    return got_pos, ids, mask


def test_worked_example_from_the_spec(reference):
    """docs/model.md §2.1: 6-frame video (grid 3×4×4) + 2.6-s audio (260 mel frames), use_audio_in_video."""
    samples = [[("text", 2), ("video", 3, 4, 4, 1.0, 260), ("text", 2)]]
    pos, ids, _ = compare(samples, reference, True)
    p = pos[:, 0]
    assert p[:, 2].tolist() == [2, 2, 2] and p[:, 3].tolist() == [2, 2, 2]  # both bos share (here s = 2)
    # chunk 0: 8 video tokens (t = 0, 25) then 50 audio tokens
    assert p[0, 4] == 3 and p[1, 4:8].tolist() == [3, 3, 4, 4] and p[2, 4:8].tolist() == [3, 4, 3, 4]
    assert p[0, 8] == 28 and p[0, 12:62].tolist() == list(range(3, 53))
    assert p[0, 62] == 53 and p[0, 66:81].tolist() == list(range(53, 68))  # chunk 1: video t=50, audio 50..64
    assert p[0, 81] == p[0, 82] == 68  # both eos
    assert p[0, 83:].tolist() == [69, 70]


def test_text_only_and_audio_only_use_plain_positions(reference):
    compare([[("text", 5)], [("text", 2), ("audio", 123), ("text", 1)]], reference, False)


def test_video_fps_below_one_misaligns_chunks_as_the_reference_does(reference):
    # second_per_grid 2.5 → temporal step 62 > 50: the single-step scanner falls behind.
    compare([[("text", 1), ("video", 4, 4, 8, 2.5, 900), ("text", 3)]], reference, True)


segment = st.one_of(
    st.tuples(st.just("text"), st.integers(1, 6)),
    st.tuples(st.just("audio"), st.integers(10, 700)),
    st.tuples(st.just("image"), st.sampled_from([2, 4, 6, 8]), st.sampled_from([2, 4, 6])),
    st.tuples(st.just("video"), st.integers(1, 4), st.sampled_from([2, 4]), st.sampled_from([2, 4, 6]),
              st.sampled_from([0.5, 1.0, 1.5, 2.0]), st.integers(30, 900)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(st.lists(segment, min_size=1, max_size=5), min_size=1, max_size=3),
    use_audio_in_video=st.booleans(),
)
def test_random_layouts_match_the_reference(reference, batch, use_audio_in_video):
    if not any(s[0] in ("image", "video") for sample in batch for s in sample):
        batch[0].append(("image", 2, 2))  # the 3-D path needs at least one visual input in the batch
    compare(batch, reference, use_audio_in_video)
