"""The toy expert (docs/toy.md §2): it answers from the media it asked for, never from the ground truth, copies
every number it writes from its context, logs every frame it saw in order, fits every row in the toy tokenizer's
`settings.MAX_ROW_TOKENS`, and beats a uniform scan with the same frame budget by far."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
import toy_helpers

from omniagent_jax.agent import prompts
from omniagent_jax.agent.cli import add_run_arguments, build_config
from omniagent_jax.agent.data import iter_samples
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import VideoEnvironment
from omniagent_jax.agent.messages import has_media, message_text, system_message, text_part, user_message
from omniagent_jax.agent.policy import ConcurrentPolicy, Policy
from omniagent_jax.agent.prompts import load_system_prompt_template
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.model.config import REPO_CONFIGS
from omniagent_jax.processing.policy_contract import PolicyError
from omniagent_jax.processing.processor import OmniProcessor
from omniagent_jax.processing.tokenizer import load_tokenizer, save_pretrained_tokenizer
from omniagent_jax.toy import settings, splits, tokenizer
from omniagent_jax.toy.expert import ExpertPolicy, UniformScanPolicy, frame_log, read_log
from omniagent_jax.toy.perceive import Seen

NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """(samples, expert results, uniform-scan results) on the sample split."""
    rows = toy_helpers.sample_split(tmp_path_factory)
    samples = list(iter_samples(rows, resolve_videos=True))
    expert = [r for _, r in splits.play(rows, "expert", progress=False)]
    uniform = [r for _, r in splits.play(rows, "uniform", progress=False)]
    return samples, expert, uniform


def test_expert_answers_all_and_a_uniform_scan_far_fewer(played):
    samples, expert, uniform = played
    assert isinstance(ExpertPolicy(), Policy) and isinstance(ExpertPolicy(), ConcurrentPolicy)
    assert all(r.correct for r in expert)
    # A coarse scan, one focused look, the answer (SIZE answers from the scan when a scan frame shows the square lit).
    assert [len(r.steps) for r in expert] == [3, 3, 3, 2, 3, 3, 3, 2]
    uniform_accuracy = sum(r.correct for r in uniform) / len(uniform)
    assert uniform_accuracy <= 0.5 and all(len(r.steps) == 2 for r in uniform)
    # The audio questions need the audio: the expert listened, the baseline could not.
    audio = [i for i, s in enumerate(samples) if s.major_type in ("MCQ", "NUM")]
    assert all(expert[i].steps[1].action["type"] == "get_audio" for i in audio)


def test_expert_never_reads_the_ground_truth(played):
    samples, expert, _ = played
    for sample, result in zip(samples[:4], expert):
        answer = "[[0.0, 1.0]]" if sample.major_type == "TR" else "Z" if sample.options else "999"
        wrong = dataclasses.replace(sample, answer=answer)
        with VideoEnvironment(wrong, settings.env_config()) as env:
            again = run_episode(env, ExpertPolicy())
        assert [s.output for s in again.steps] == [s.output for s in result.steps] and not again.correct


def test_every_number_the_expert_writes_is_in_its_context(played):
    _, expert, _ = played
    for result in expert:
        for step in result.steps:
            context = " ".join(message_text(m) for m in step.raw_input)
            written = set(NUMBER.findall(step.output))
            assert written and written <= set(NUMBER.findall(context)), (step.output, written - set(NUMBER.findall(context)))


def test_frame_observations_log_every_frame_in_order(played):
    """After frames, the observation starts with one entry per frame, in the order of their labels (what the frame
    showed, then its label), and its summary names the first lit frame of the log."""
    _, expert, _ = played
    logged = 0
    for result in expert:
        for step in result.steps[1:]:
            media = next(m for m in reversed(step.raw_input) if m["role"] == "user" and has_media(m))
            if not any(p.get("type") == "image" for p in media["content"]):
                continue
            texts = [p["text"] for p in media["content"] if p.get("type") == "text"]
            labels = [t[len("Frame "):-1] for t in texts if t.startswith("Frame ")]
            observation = re.search(r'"observation": "([^"]*)"', step.output).group(1)
            log, summary = observation.split(". ", 1)
            entries = [e.rsplit(" ", 1) for e in log.split(", ")]  # what the frame showed, then its label
            assert [label for _, label in entries] == labels
            assert all(re.fullmatch(r"-|dot|lit|lit \d+px|[a-z]+", what) for what, _ in entries), entries
            lit = [label for what, label in entries if what.startswith("lit")]
            if lit:
                assert re.search(rf"lit at {re.escape(lit[0])}\b", summary), (lit, summary)
            logged += 1
    assert logged >= len(expert)


def test_frame_log_reads_back():
    """``read_log`` returns the entries ``frame_log`` writes (what, label, where ``what`` starts), and stops where the
    log does."""
    labels = ["0.00s", "2.75s", "5.50s", "8.25s"]
    seen = [[], [Seen("red", 0, 13)], [Seen("red", 0, 0), Seen("cyan", 2, 9)], [Seen("red", 0, 0), Seen("cyan", 2, 0)]]
    log = frame_log(labels, seen, "red", sizes=True)
    assert log == "- 0.00s, lit 13px 2.75s, dot 5.50s, dot 8.25s"
    assert frame_log(labels, seen) == "- 0.00s, red 2.75s, cyan 5.50s, - 8.25s"
    assert frame_log(labels, seen, "red", with_labels=False) == "-, lit, dot, dot"
    observation = log + ". square (13 px) lit at 2.75s; dot from 5.50s."
    entries = read_log(observation)
    assert [(e.what, e.word, e.label) for e in entries] == [
        ("-", "-", "0.00s"), ("lit 13px", "lit", "2.75s"), ("dot", "dot", "5.50s"), ("dot", "dot", "8.25s")]
    assert [observation[e.at : e.at + len(e.what)] for e in entries] == ["-", "lit 13px", "dot", "dot"]
    assert [e.label for e in read_log("- 0.00s, dot 4.27s, then something else. x")] == ["0.00s", "4.27s"]
    for text in ("Nothing inspected yet.", "A steady high tone.", "3 short high beeps.", "0.00s -, 2.75s lit."):
        assert read_log(text) == []


def test_rows_fit_the_toy_tokenizer(played, tmp_path):
    _, expert, _ = played
    tok = load_tokenizer(REPO_CONFIGS / "toy" / "tokenizer")
    assert len(tok) == tokenizer.VOCAB_SIZE
    # Saved and reloaded, it still splits text its own way (numbers whole), not as Qwen2Tokenizer would.
    save_pretrained_tokenizer(tok, tmp_path / "copy")
    again = load_tokenizer(tmp_path / "copy")
    text = expert[0].steps[1].output
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    # A time on the frame grid is one token wherever it stands; other numbers are cut into digit pairs from the
    # right and decimals, and every such piece is one token.
    assert again.tokenize('"start": 163.75, "end": 0.00}')[1::3] == ["163.75", "0.00"]
    assert again.tokenize("Frame 574.75s:")[1] == "574.75" and tokenizer.TIMES[-1] == "600.00"
    assert again.tokenize("163.64 s")[:3] == ["1", "63", ".64"] and again.tokenize("1234")[:2] == ["12", "34"]
    vocab = tok.get_vocab()
    assert all(p in vocab for p in tokenizer.NUMBER_PIECES) and all(t in vocab for t in tokenizer.TIMES)
    processor = OmniProcessor(tok)
    assert processor.special_ids == tokenizer.special_ids()
    lengths = tokenizer.row_lengths(processor, expert)
    assert lengths.max <= settings.MAX_ROW_TOKENS
    system = expert[0].steps[0].raw_input[0]
    assert len(tok(message_text(system))["input_ids"]) <= 150
    # The same template as a file, for the CLIs' --system-prompt-file; the CLI flags play the same episode.
    assert load_system_prompt_template(settings.SYSTEM_PROMPT_FILE) == settings.SYSTEM_PROMPT_TEMPLATE
    args = add_run_arguments(argparse.ArgumentParser()).parse_args(["--video", "v.mp4", "--question", "q", *settings.cli_flags()])
    assert build_config(args) == settings.env_config()
    with pytest.raises(ValueError, match="the toy corpus yields only .* BPE tokens"):
        tokenizer.train_tokenizer(["far too little text"])


def test_concurrent_play_matches_one_by_one(played):
    samples, expert, _ = played
    episodes = [Episode(f"e{i}", VideoEnvironment(s, settings.env_config())) for i, s in enumerate(samples)]
    results = EpisodeDriver(ExpertPolicy(), max_live=4, workers=2).run(episodes)
    assert [[s.output for s in r.steps] for r in results] == [[s.output for s in r.steps] for r in expert]
    for e in episodes:
        e.env.close()


def test_expert_refuses_a_history_it_cannot_read():
    policy = ExpertPolicy()
    with pytest.raises(PolicyError, match="no duration in the prompt"):
        policy.generate([system_message("(Max 12 frames)"), user_message([text_part("Question: hi")])])
    meta = "Video META:\n- duration_seconds: 30.00\n- fps: 2.00\n- has_audio: True\n\nQuestion: "
    tr = meta + "When is the red square lit?" + prompts.ANSWER_GUIDES["TR"]
    question = "What colour is the square that flashes with the high tone?"
    mcq = meta + question + prompts.OPTIONS_HEADER + "A. red\nB. blue" + prompts.ANSWER_GUIDES["MCQ"]
    failed_turn = [{"role": "assistant", "content": [text_part("{}")]}, user_message([text_part("[ERROR] INVALID_JSON")])]
    # After a failed turn the last media message is not the frames or audio the plan needs next.
    with pytest.raises(PolicyError, match="expected frames"):
        policy.generate([system_message("(Max 12 frames)"), user_message([text_part(tr)]), *failed_turn])
    with pytest.raises(PolicyError, match="expected audio"):
        policy.generate([system_message("(Max 12 frames)"), user_message([text_part(mcq)]), *failed_turn, *failed_turn])
    assert isinstance(UniformScanPolicy(), ExpertPolicy)
