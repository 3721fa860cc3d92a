"""A toy agentic task that RL can learn on a CPU in minutes (configs/rl/tiny.yaml, docs/training.md §10.7).

Two turns: the model fetches one frame, then answers A (red) or B (blue). `build(dir)` makes everything a
run needs from nothing: a red and a blue 2-second video, the RL JSONL (questions about the red one), a
small byte-level BPE vocabulary trained on the task's own texts with each turn's constant JSON as whole
tokens, a tiny thinker of that vocabulary, and an SFT warm-up on scripted episodes of both videos that
teaches the turn format while leaving the answer a coin flip (both letters are targets for every video).
RL asks about the red video only, so one arm (A) pays: only the reward can move the answer there (a run
with zeroed advantages does not). The directory is reused when it is complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from fractions import Fraction

import numpy as np

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.limits import EpisodeLimits

log = logging.getLogger(__name__)

SYSTEM_TEMPLATE = "Fetch a frame, then answer. Limits: {max_frames} frames, {max_audio}s audio, {max_clip}s clips."
QUESTION = "What colour is the video?"
OPTIONS = ("A. red", "B. blue")
COLOURS = {"A": (220, 30, 30), "B": (30, 30, 220)}
VIDEO_NAMES = {"A": "red.mp4", "B": "blue.mp4"}
# RL asks about the red video only: one arm pays. (Tying the letter to the colour through the random frozen
# vision tower was not learned within 20 steps of a 64-wide model.)
RL_LETTER = "A"
LIMITS = EpisodeLimits(max_frames=4, max_audio=10, max_clip=10)
MAX_STEPS = 3
VOCAB = 1024
DONE = "READY"  # marker file: the directory is complete


def _turn(action: dict) -> str:
    return json.dumps({"observation": "", "think": "", "action": action}, separators=(",", ":"))


FETCH = _turn({"type": "get_frames", "start": 0, "end": 1, "num": 1})


def answer(letter: str) -> str:
    return _turn({"type": "answer", "content": letter})


# Whole stretches of the two turns as single tokens: the fetch turn is one token, an answer three (the
# letter in the middle), so the warm-up is quick and RL's only choice is the letter.
TURN_PIECES = (FETCH, answer("")[:-3], '"}}')


def env_config(system_prompt_template: str = SYSTEM_TEMPLATE) -> EnvConfig:
    """The environment the task is played in (RL's `env` section is set to it)."""
    return EnvConfig(limits=LIMITS, budget=StepBudget(max_steps=MAX_STEPS, dynamic=False),
                     system_prompt_template=system_prompt_template, strict_confidence=False)


@dataclasses.dataclass(frozen=True)
class BanditTask:
    root: pathlib.Path

    @property
    def init(self) -> pathlib.Path:
        return self.root / "init"

    @property
    def train_file(self) -> pathlib.Path:
        return self.root / "train.jsonl"

    @property
    def system_prompt_file(self) -> pathlib.Path:
        return self.root / "system_prompt.txt"


def write_video(path: pathlib.Path, rgb: tuple[int, int, int], *, seconds: float = 2.0, fps: int = 2, size: int = 56) -> None:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("h264", rate=Fraction(fps))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        frame = np.empty((size, size, 3), np.uint8)
        frame[:] = rgb
        for i in range(int(seconds * fps)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def sample(root: pathlib.Path, letter: str, index: int = 0) -> Sample:
    return Sample(video=str(root / VIDEO_NAMES[letter]), question_type="MCQ", question=QUESTION, options=OPTIONS,
                  answer=letter, index=index)


def scripted_turns(root: pathlib.Path, letter: str, said: str) -> list[tuple[list, str]]:
    """(the messages before each turn, the turn's text) of the episode on `letter`'s video answering `said`."""
    with VideoEnvironment(sample(root, letter), env_config()) as env:
        env.reset()
        first = env.observe()[0]
        env.step(FETCH)
        second = env.observe()[0]
        env.step(answer(said))
        final = env.messages
    return [(first, FETCH), (second, answer(said))], final


def _texts(root: pathlib.Path) -> list[str]:
    texts = ["system\n", "user\n", "assistant\n", FETCH, answer("A"), answer("B")]
    for letter in COLOURS:
        for said in COLOURS:
            _, final = scripted_turns(root, letter, said)
            for m in final:
                parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
                texts += [p["text"] for p in parts if p.get("type") == "text"]
    return texts


def build_tokenizer(texts: list[str]):
    """A byte-level BPE over `texts` (at most `VOCAB` minus the specials), the Omni specials after it."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from omniagent_jax.processing import tokens
    from omniagent_jax.processing.tokenizer import wrap_backend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    size = VOCAB - len(tokens.SPECIAL_TOKENS) - len(TURN_PIECES) - 2
    trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts * 4, trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, normalized=False) for t in TURN_PIECES])
    return wrap_backend(backend)


def model_config(tokenizer):
    from omniagent_jax.model.config import special_id_fields, tiny
    from omniagent_jax.processing import tokens

    ids = tokens.SpecialIds.from_tokenizer(tokenizer)
    base = tiny()
    text = dataclasses.replace(base.text, vocab_size=VOCAB)
    return dataclasses.replace(base, text=text, **special_id_fields(ids), stop_token_ids=(ids.im_end, ids.pad))


def warmup(model, processor, root: pathlib.Path, *, steps: int, lr: float, seed: int):
    """SFT on the scripted turns: the fetch turn, and for each colour both answers (so each is ~1/2)."""
    import jax
    import optax

    from omniagent_jax.train import collate, optim
    from omniagent_jax.train import step as step_lib
    from omniagent_jax.train.grouping import bucket_length
    from omniagent_jax.train.labels import IGNORE

    prepared = []
    for letter in COLOURS:
        for said in COLOURS:
            for messages, text in scripted_turns(root, letter, said)[0]:
                inputs = processor(messages, add_generation_prompt=True)
                context = inputs.pop("input_ids")[0]
                inputs.pop("attention_mask")
                target = list(processor.tokenizer.encode(text, add_special_tokens=False)) + [processor.special_ids.im_end]
                ids = np.concatenate([context, np.asarray(target, context.dtype)]).astype(np.int32)
                labels = np.full(ids.shape, IGNORE, np.int32)
                labels[len(context) - 1 : len(ids) - 1] = ids[len(context) :]
                prepared.append(collate.prepare(model, {"input_ids": ids, "labels": labels, **inputs}))
    length = bucket_length(max(len(p["input_ids"]) for p in prepared), (128, 256, 512))
    batch = collate.collate(prepared, 1, length, model.config.text.hidden_size)
    graphdef, params, frozen, other = optim.split_model(model, (r"^audio_tower\.", r"^visual\."))
    tx = optax.adamw(lr, weight_decay=0.0)
    fns = step_lib.StepFns(graphdef, tx, loss_chunk=256)
    state = step_lib.init_state(jax.tree.map(lambda x: x.copy(), params), tx, seed)
    batch = {k: jax.numpy.asarray(v) for k, v in batch.items()}
    for _ in range(steps):
        state, metrics = fns.jit_train_step(state, frozen, other, batch)
    log.info("bandit warm-up: %d steps, final loss %.4f", steps, float(metrics["loss"]))
    from flax import nnx

    return nnx.merge(graphdef, state.params, frozen, other), float(metrics["loss"])


def build(root: str | pathlib.Path, *, seed: int = 0, warmup_steps: int = 100, warmup_lr: float = 3e-3,
          rows: int = 8) -> BanditTask:
    """The task in `root` (reused when complete): videos, `train.jsonl`, `system_prompt.txt` and `init/`
    (the warmed-up tiny thinker with its tokenizer)."""
    import jax.numpy as jnp
    from flax import nnx

    from omniagent_jax.model import Thinker
    from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint
    from omniagent_jax.processing.processor import OmniProcessor
    from omniagent_jax.processing.tokenizer import save_pretrained_tokenizer

    task = BanditTask(pathlib.Path(root))
    if (task.root / DONE).is_file():
        return task
    task.root.mkdir(parents=True, exist_ok=True)
    for letter, name in VIDEO_NAMES.items():
        write_video(task.root / name, COLOURS[letter])
    task.system_prompt_file.write_text(SYSTEM_TEMPLATE, encoding="utf-8")
    with open(task.train_file, "w", encoding="utf-8") as f:
        for i in range(rows):
            row = {**sample(task.root, RL_LETTER).to_json(), "video": VIDEO_NAMES[RL_LETTER], "extra_info": {"index": i}}
            f.write(json.dumps(row) + "\n")
    # The warm-up encodes with the tokenizer as saved and reloaded: a freshly trained one can split some
    # strings differently from its own reload, and the run reads the reload.
    staging = task.root / "tokenizer"
    save_pretrained_tokenizer(build_tokenizer(_texts(task.root)), staging)
    processor = OmniProcessor.from_pretrained(staging)
    model = Thinker(model_config(processor.tokenizer), dtype=jnp.float32, rngs=nnx.Rngs(seed))
    model, _ = warmup(model, processor, task.root, steps=warmup_steps, lr=warmup_lr, seed=seed)
    save_jax_checkpoint(model, task.init, overwrite=True)
    save_pretrained_tokenizer(processor.tokenizer, task.init)
    (task.root / DONE).write_text("ok\n")
    return task
