"""Rollouts → turn rows (docs/training.md §10): each OTA turn of each trajectory is one training row.

A row holds the prompt exactly as the engine saw it at that turn (its token ids and media inputs, kept by
`JaxPolicy(keep_prompts=True)` on the turn's `PolicyOutput.prompt`), the response tokens with the sampler's
per-token log-probs and entropies, the group `uid` and `traj_uid`, validity and the episode reward.
Trajectories that hit the step or token limit (no answer) train with reward 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from omniagent_jax.agent.environment import END_ANSWERED, END_MEDIA_FAILURE
from omniagent_jax.agent.episode import END_ERROR, EpisodeResult
from omniagent_jax.processing.media_inputs import MediaInputs
from omniagent_jax.processing.policy_contract import PolicyOutput, turn_key

# A group holding an episode that ended so is left out of the batch (the video, not the policy, failed).
BROKEN_ENDS = (END_MEDIA_FAILURE, END_ERROR)


@dataclasses.dataclass
class TurnRow:
    group: str  # the prompt group's uid
    traj: str  # traj_uid: the episode's key
    turn: int  # 1-based
    prompt_ids: np.ndarray
    media: MediaInputs | None
    response_ids: np.ndarray
    logprobs: np.ndarray  # the sampler's, one per response token
    entropies: np.ndarray | None  # the sampler's, one per response token
    reward: float  # the episode's
    valid: bool  # the turn's action was valid
    terminal: bool  # the turn ended the episode
    question_type: str = ""

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


class RecordingPolicy:
    """A :class:`~omniagent_jax.agent.policy.ConcurrentPolicy` around another that keeps every finished
    turn's `PolicyOutput` by turn key (the driver's records keep only the text and log-probs)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.outputs: dict[str, PolicyOutput] = {}

    def generate(self, messages, *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        return self.policy.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)

    def submit(self, key: str, messages, *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        self.policy.submit(key, messages, unchanged_prefix=unchanged_prefix, seed=seed)

    def cancel(self, key: str) -> None:
        self.policy.cancel(key)

    def collect(self, timeout: float | None = None):
        done = self.policy.collect(timeout)
        for key, out in done:
            if isinstance(out, PolicyOutput):
                self.outputs[key] = out
        return done


def episode_reward(result: EpisodeResult) -> float:
    """The reward a trajectory trains with: its answer's score; 0 when it ended without answering."""
    return float(result.total_reward) if result.end_reason == END_ANSWERED else 0.0


def episode_rows(group: str, key: str, result: EpisodeResult, outputs: dict[str, PolicyOutput],
                 question_type: str = "") -> list[TurnRow]:
    """The turn rows of one played episode (`key`: its driver key, also its `traj_uid`)."""
    reward = episode_reward(result)
    rows = []
    for t, record in enumerate(result.steps, 1):
        out = outputs.get(turn_key(key, t))
        if out is None or out.prompt is None or out.token_ids is None or out.logprobs is None:
            raise ValueError(f"turn {t} of episode {key} has no kept prompt, tokens and log-probs "
                             "(the policy needs keep_prompts=True and logprobs=True)")
        prompt = out.prompt
        rows.append(TurnRow(
            group=group, traj=key, turn=t, prompt_ids=np.asarray(prompt.input_ids, np.int32), media=prompt.media,
            response_ids=np.asarray(out.token_ids, np.int32), logprobs=np.asarray(out.logprobs, np.float32),
            entropies=None if out.entropies is None else np.asarray(out.entropies, np.float32),
            reward=reward, valid=record.result.is_action_valid, terminal=record.result.done, question_type=question_type,
        ))
    return rows


def keep_rows(rows: Sequence[TurnRow], retry_on_format_error: bool) -> list[TurnRow]:
    """With `retry_on_format_error`, invalid non-terminal turns leave the batch (their error messages stay
    in later turns' prompts); empty responses never train."""
    return [r for r in rows if len(r.response_ids) and not (retry_on_format_error and not r.valid and not r.terminal)]


def broken_group(results: Sequence[EpisodeResult]) -> bool:
    """Whether a group must be left out: one of its episodes ended on a media failure or a driver error."""
    return any(r.end_reason in BROKEN_ENDS for r in results)


def prepare_row(model, row: TurnRow) -> dict[str, np.ndarray]:
    """One row → the trainer's arrays over its `T = prompt + response` tokens: input_ids, TMRoPE positions
    `[3, T]`, media embeddings `[T, D]` + mask (from the frozen towers, as `collate.prepare`), the next
    token's id at every position (`targets`), `loss_mask` on positions predicting a response token, and the
    sampler's log-probs / entropies at those positions."""
    ids = np.concatenate([row.prompt_ids, row.response_ids]).astype(np.int32)
    n, p = len(ids), len(row.prompt_ids)
    media = row.media if row.media is not None and not row.media.empty else None
    positions, _ = model.rope_index(ids[None], None, media)
    targets = np.zeros(n, np.int32)
    targets[:-1] = ids[1:]
    mask = np.zeros(n, bool)
    mask[p - 1 : n - 1] = True
    logp = np.zeros(n, np.float32)
    logp[p - 1 : n - 1] = row.logprobs
    ent = np.zeros(n, np.float32)
    if row.entropies is not None:
        ent[p - 1 : n - 1] = row.entropies
    out = {"input_ids": ids, "positions": np.asarray(positions)[:, 0], "targets": targets, "loss_mask": mask,
           "logp_rollout": logp, "ent_rollout": ent}
    if media is not None:
        slots, emb = model.media_embeddings(ids[None], media)
        embeds = np.zeros((n, model.config.text.hidden_size), np.float32)
        media_mask = np.zeros(n, bool)
        embeds[slots] = np.asarray(emb, np.float32)
        media_mask[slots] = True
        out["media_embeds"], out["media_mask"] = embeds, media_mask
    return out
