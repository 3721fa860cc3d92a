"""The rollout phase of an RL step (docs/training.md §10): every prompt played `n` times through the
episode driver on the paged engine, the episodes turned into turn rows, GRPO advantages per trajectory.

Seeds are a pure function of (run seed, step, prompt position, rollout, turn): episode
`episode_seed(seed, step · prompts + j, k)`, its turns `turn_seed` (the driver's), so a resumed run replays
exactly the rollouts an uninterrupted one would have played.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from omniagent_jax.agent import rewards
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.prompts import DEFAULT_SYSTEM_PROMPT_TEMPLATE, load_system_prompt_template
from omniagent_jax.processing.policy_contract import episode_seed
from omniagent_jax.train.rl.advantages import grpo_advantages
from omniagent_jax.train.rl.config import RLConfig
from omniagent_jax.train.rl.rows import RecordingPolicy, TurnRow, broken_group, episode_reward, episode_rows, keep_rows


def env_config(cfg: RLConfig) -> EnvConfig:
    e = cfg.env
    template = load_system_prompt_template(e.system_prompt_file) if e.system_prompt_file else DEFAULT_SYSTEM_PROMPT_TEMPLATE
    return EnvConfig(limits=EpisodeLimits(max_frames=e.max_frames, max_audio=e.max_audio, max_clip=e.max_clip),
                     budget=StepBudget(max_steps=e.max_steps, dynamic=e.dynamic_steps), system_prompt_template=template,
                     strict_confidence=e.strict_confidence, mcq_mode=e.mcq_mode,
                     max_prompt_tokens=e.max_prompt_tokens or None)


@dataclasses.dataclass
class RolloutBatch:
    rows: list[TurnRow]  # the kept turn rows
    traj_adv: dict[tuple[str, str], float]  # (group, traj) -> GRPO advantage
    results: dict[str, EpisodeResult]  # every episode played, by key
    dropped_groups: int
    metrics: dict[str, float]


def play(cfg: RLConfig, step: int, samples: Sequence[Sample], policy, env: EnvConfig, *, token_counter=None,
         progress: bool = False) -> RolloutBatch:
    """Plays `n` rollouts of each sample (one group each) and returns the rows to train on."""
    t0 = time.perf_counter()
    recorder = RecordingPolicy(policy)
    bar = tqdm(total=len(samples) * cfg.rollout.n, desc=f"rollout {step + 1}", disable=not progress, leave=False)
    driver = EpisodeDriver(recorder, max_live=cfg.rollout.max_live, workers=cfg.rollout.workers,
                           on_episode=lambda *_: bar.update(1))
    episodes, owner = [], {}
    for j, sample in enumerate(samples):
        group = f"s{step}-p{j}"
        make = functools.partial(VideoEnvironment, sample, env, token_counter=token_counter)
        for k in range(cfg.rollout.n):
            key = f"{group}-r{k}"
            episodes.append(Episode(key, make, episode_seed(cfg.seed, step * len(samples) + j, k)))
            owner[key] = (group, sample)
    try:
        played = driver.run(episodes)
    finally:
        bar.close()
    results = {e.key: r for e, r in zip(episodes, played)}
    by_group: dict[str, list[str]] = {}
    for key, (group, _) in owner.items():
        by_group.setdefault(group, []).append(key)
    rows, trajs, dropped, with_signal = [], [], 0, 0
    for group, keys in by_group.items():
        if broken_group([results[k] for k in keys]):
            dropped += 1
            continue
        qtype = owner[keys[0]][1].question_type
        group_rewards = [episode_reward(results[key]) for key in keys]
        for key, reward in zip(keys, group_rewards):
            rows += episode_rows(group, key, results[key], recorder.outputs, qtype)
            trajs.append((group, key, reward))
        # A group whose rollouts all earn the same reward has zero advantage: it teaches nothing this step.
        with_signal += len(set(group_rewards)) > 1
    traj_adv = {}
    if trajs:
        g, t, r = zip(*trajs)
        traj_adv = dict(zip(zip(g, t), grpo_advantages(r, g, t, eps=cfg.algo.grpo_eps)))
    kept = keep_rows(rows, cfg.algo.retry_on_format_error)
    metrics = episode_metrics(results, owner, recorder.outputs.values())
    metrics.update(dropped_groups=dropped, rows=len(kept), rows_dropped=len(rows) - len(kept),
                   groups_with_signal=with_signal / max(len(by_group) - dropped, 1), rollout_seconds=time.perf_counter() - t0)
    return RolloutBatch(kept, traj_adv, results, dropped, metrics)


def episode_metrics(results: dict[str, EpisodeResult], owner: dict, outputs) -> dict[str, float]:
    """Reward mean/std (all and by question type), accuracy, turns per episode, invalid-action and
    length-finish rates, and the engine's prompt tokens prefilled vs reused."""
    rw = {k: episode_reward(r) for k, r in results.items()}
    out: dict[str, float] = {}
    values = np.array(list(rw.values()), np.float64)
    out["reward/mean"], out["reward/std"] = float(values.mean()), float(values.std())
    out["accuracy"] = float(np.mean([rewards.is_correct(v) for v in values]))
    for qtype in sorted({rewards.major_type(s.question_type) for _, s in owner.values()}):
        v = np.array([rw[k] for k, (_, s) in owner.items() if rewards.major_type(s.question_type) == qtype])
        out[f"reward/{qtype}/mean"], out[f"reward/{qtype}/std"] = float(v.mean()), float(v.std())
    steps = [s for r in results.values() for s in r.steps]
    out["turns_per_episode"] = len(steps) / max(len(results), 1)
    out["invalid_action_rate"] = float(np.mean([not s.result.is_action_valid for s in steps])) if steps else 0.0
    out["length_finish_rate"] = float(np.mean([s.finish_reason == "length" for s in steps])) if steps else 0.0
    outputs = list(outputs)
    out["prompt_tokens"] = float(sum(o.metrics.prompt_tokens or 0 for o in outputs))
    out["prefilled_tokens"] = float(sum(o.metrics.prefilled_tokens or 0 for o in outputs))
    out["reused_tokens"] = float(sum(o.metrics.cached_prompt_tokens or 0 for o in outputs))
    out["response_tokens_generated"] = float(sum(len(o.token_ids or ()) for o in outputs))
    return out
