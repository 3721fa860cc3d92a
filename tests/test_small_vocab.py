"""A checkpoint of its own vocabulary: 512 token ids, its own byte-level BPE, and the Omni special strings
at ids 300..321 instead of Qwen's. Saved with the project's writers, loaded through the normal loaders,
it runs the processor, the full forward with an image and audio, and the engine end to end."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omniagent_jax.model import Thinker
from omniagent_jax.model.config import ThinkerConfig, special_id_fields, tiny
from omniagent_jax.model.convert import jax_to_hf
from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint
from omniagent_jax.processing import tokens
from omniagent_jax.processing.processor import OmniProcessor
from omniagent_jax.processing.tokenizer import load_tokenizer, save_pretrained_tokenizer, wrap_backend

VOCAB = 512
NUM_BPE = 300  # ordinary tokens 0..299; the 22 specials follow at 300..321, in tokens.SPECIAL_TOKENS order
SMALL = tokens.SpecialIds(im_start=301, im_end=302, pad=300, image=312, video=313, audio=303,
                          vision_bos=309, vision_eos=310, audio_bos=304, audio_eos=305)  # fmt: skip
SENTENCES = [
    "You are a helpful assistant.",
    "Describe the picture and the sound.",
    "The quick brown fox jumps over the lazy dog.",
    "A small model has its own vocabulary and its own special tokens.",
    "user",
    "assistant",
    "system",
]
IMAGE = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)  # 4×4 patches → 4 tokens
AUDIO = (0.1 * np.sin(np.arange(8_000) * 0.05)).astype(np.float32)  # 0.5 s → 12 tokens
MESSAGES = [
    {"role": "user", "content": [
        {"type": "image", "image": IMAGE}, {"type": "audio", "audio": AUDIO}, {"type": "text", "text": "Describe the picture"},
    ]},
]  # fmt: skip


def small_tokenizer():
    """A byte-level BPE trained on a few sentences, the Omni specials added after its 300 tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=NUM_BPE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(SENTENCES, trainer)
    assert backend.get_vocab_size() == NUM_BPE
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.SPECIAL_TOKENS])
    return wrap_backend(backend)


def small_config() -> ThinkerConfig:
    """The `tiny` preset's dimensions with a 512-token vocabulary and the small vocabulary's ids."""
    base = tiny()
    text = dataclasses.replace(base.text, vocab_size=VOCAB)
    return dataclasses.replace(base, text=text, **special_id_fields(SMALL), stop_token_ids=(SMALL.im_end, SMALL.pad))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A JAX checkpoint directory written by `save_jax_checkpoint` + `save_pretrained_tokenizer`."""
    path = tmp_path_factory.mktemp("small_vocab") / "ckpt"
    model = Thinker(small_config(), dtype=jnp.float32, rngs=nnx.Rngs(0))
    save_jax_checkpoint(model, path)
    save_pretrained_tokenizer(small_tokenizer(), path)
    return path


@pytest.fixture(scope="module")
def loaded(checkpoint):
    """(model, processor) through the normal loaders."""
    return Thinker.from_pretrained(checkpoint, dtype=jnp.float32), OmniProcessor.from_pretrained(checkpoint)


def test_checkpoint_files_name_the_small_ids(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["text_config"]["vocab_size"], config["image_token_index"], config["audio_token_index"]) == (VOCAB, 312, 303)
    assert (config["pad_token_id"], config["eos_token_id"]) == (300, 302)
    generation = json.loads((checkpoint / "generation_config.json").read_text())
    assert generation == {"eos_token_id": [302, 300], "pad_token_id": 300}
    tokenizer = load_tokenizer(checkpoint)
    assert len(tokenizer) == NUM_BPE + len(tokens.SPECIAL_TOKENS) and tokenizer.eos_token_id == SMALL.im_end
    assert tokens.SpecialIds.from_tokenizer(tokenizer) == SMALL


def test_loaded_model_and_processor_agree_on_the_small_ids(loaded):
    model, processor = loaded
    assert model.config == small_config() and processor.special_ids == SMALL
    model.config.check_special_ids(processor.special_ids)
    with pytest.raises(ValueError, match="disagree on special token ids: audio_token_id=151646 vs audio=303"):
        tiny().check_special_ids(processor.special_ids)


def test_processor_expands_placeholders_with_the_small_ids(loaded):
    _, processor = loaded
    batch = processor([MESSAGES, [{"role": "user", "content": "hi"}]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.max() < VOCAB
    first = ids[0].tolist()
    assert first[0] == SMALL.im_start and first.count(SMALL.im_start) == 3 and first.count(SMALL.im_end) == 2
    assert first.count(SMALL.image) == 4 and first.count(SMALL.audio) == 12 and SMALL.video not in first
    start = first.index(SMALL.vision_bos)
    assert first[start : start + 6] == [SMALL.vision_bos, *[SMALL.image] * 4, SMALL.vision_eos]
    assert first[start + 6] == SMALL.audio_bos and first[start + 19] == SMALL.audio_eos
    assert mask[0].all() and not mask[1].all() and (ids[1][mask[1] == 0] == SMALL.pad).all()  # left-padded with 300


def test_forward_with_image_and_audio_reads_the_small_placeholders(loaded):
    model, processor = loaded
    inputs = processor(MESSAGES)
    logits = np.asarray(model(**inputs))
    assert logits.shape == (1, inputs["input_ids"].shape[1], VOCAB) and np.isfinite(logits).all()
    # The image rows fill the <|IMAGE|> slots (id 312): other pixels change the logits from the first slot on.
    other = dict(inputs, pixel_values=inputs["pixel_values"][::-1].copy())
    changed = np.abs(np.asarray(model(**other)) - logits).max(axis=-1)[0]
    first_slot = inputs["input_ids"][0].tolist().index(SMALL.image)
    assert changed[:first_slot].max() == 0 and changed[first_slot:].min() > 0


def test_hf_export_keeps_the_ids(checkpoint, tmp_path):
    out = jax_to_hf(checkpoint, tmp_path / "hf", progress=False)
    assert ThinkerConfig.from_hf(out) == small_config()
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [302, 300]
    assert tokens.SpecialIds.from_tokenizer(load_tokenizer(out)) == SMALL


def test_sft_targets_end_with_the_checkpoints_im_end(loaded):
    from omniagent_jax.train.sft_data import SampleEncoder

    _, processor = loaded
    row = {"raw_input": [{"role": "user", "content": "Describe the sound."}], "output": "the dog", "extra_info": {}}
    sample = SampleEncoder(processor, data_root=".", max_length=512).encode(row)
    assert sample["input_ids"][-1] == SMALL.im_end and sample["labels"][-2] == SMALL.im_end
    with pytest.raises(ValueError, match="vocab_remap shrinks the Qwen vocabulary"):
        SampleEncoder(processor, data_root=".", max_length=512, vocab_remap=512)


def test_engine_end_to_end_with_the_checkpoints_stop_ids(loaded):
    from omniagent_jax.engine import Engine, SamplingParams
    from omniagent_jax.engine.policy import JaxPolicy
    from omniagent_jax.engine.server_protocol import BadRequest, stop_token_ids

    model, processor = loaded
    engine = Engine(model, page_size=16, num_pages=64, max_batch=2, decode_steps=4)
    assert engine.stop_token_ids == (SMALL.im_end, SMALL.pad)  # from generation_config.json
    policy = JaxPolicy(engine, processor, SamplingParams(temperature=0.0, max_new_tokens=4))
    with pytest.raises(ValueError, match="disagree on special token ids"):
        JaxPolicy(engine, OmniProcessor(processor.tokenizer, special_ids=tokens.QWEN_SPECIAL_IDS))

    # Requests that name no stops get the checkpoint's; the image and audio go through the towers.
    request = policy.request(MESSAGES)
    assert request.sampling.stop_token_ids is None and request.media.items
    free = engine.generate([request])[0]
    assert engine.stats.tower_items == 2 and len(free.tokens) <= 4 and max(free.tokens) < VOCAB
    assert free.finish_reason == ("stop" if free.tokens[-1] in (SMALL.im_end, SMALL.pad) else "length")

    # A forced stop ends the turn there; the server maps `stop: <|im_end|>` to this vocabulary's id.
    def run(stops: tuple[int, ...]):
        sampling = SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=stops)
        return engine.generate([policy.request(MESSAGES, sampling)])[0]

    greedy = run(())
    stopped = run((greedy.tokens[1],))
    assert stopped.tokens == greedy.tokens[: greedy.tokens.index(greedy.tokens[1]) + 1] and stopped.finish_reason == "stop"
    assert stop_token_ids(tokens.IM_END, processor.tokenizer) == (SMALL.im_end,)
    with pytest.raises(BadRequest, match=r"stop: tokens \['<\|im_end\|>'\] are not in the served model's vocabulary"):
        stop_token_ids([tokens.IM_END], None)  # no tokenizer to look it up in

    # Decoding drops this checkpoint's stop ids, not Qwen's.
    body = [t for t in greedy.tokens if t not in (SMALL.im_end, SMALL.pad)] or [65]
    assert policy.decode([*body, SMALL.im_end]) == policy.decode([*body, SMALL.pad]) == processor.tokenizer.decode(body)

    out = policy.generate(MESSAGES, seed=0)
    assert out.token_ids == free.tokens and out.metrics.cached_prompt_tokens > 0
