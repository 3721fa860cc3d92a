"""The video environment: one episode of the OTA loop over one video (docs/protocol.md §1–§5).

The environment owns the message history. Each :meth:`VideoEnvironment.step` takes the model's raw
text, parses and validates it, cuts the requested media out of the video (through
``omniagent_jax.media``, one open container per episode), scores answers, consolidates old media
into placeholders, enforces the token limit and writes the step notice.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from omniagent_jax.agent import memory, prompts, rewards
from omniagent_jax.agent.actions import ANSWER, Answer, GetAudio, GetClip, GetFrames, Turn, parse_action
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.errors import ActionError, ErrorCode
from omniagent_jax.agent.limits import (
    CLIP_MIN_FPS,
    CLIP_MIN_FRAMES_SLACK,
    CLIP_MIN_SOURCE_FRAMES,
    LENGTH_LIMIT_SLACK,
    MIN_AUDIO_SECONDS,
    TOKEN_LIMIT_TOLERANCE,
    EpisodeLimits,
)
from omniagent_jax.agent.messages import (
    MediaRecord,
    Message,
    assistant_message,
    media_part,
    system_message,
    text_part,
    user_message,
)

# Why an episode ended (``StepResult.end_reason``).
END_ANSWERED = "ANSWERED"
END_STEP_LIMIT = ErrorCode.STEP_LIMIT_REACHED.value
END_TOKEN_LIMIT = ErrorCode.TOKEN_LIMIT_EXCEEDED.value
END_MEDIA_FAILURE = ErrorCode.MEDIA_DECODE_FAIL.value


class MediaReader(Protocol):
    """What the environment needs from ``omniagent_jax.media.open_video(path)``."""

    info: Any  # VideoInfo: .duration, .fps, .has_audio, ...

    def frames(self, timestamps: Sequence[float]) -> np.ndarray: ...

    def audio(self, start: float, end: float) -> np.ndarray: ...

    def clip(self, start: float, end: float) -> Any: ...

    def close(self) -> None: ...


MediaOpener = Callable[[str], MediaReader]
# Counts the prompt tokens of a message list (the real processor, or an estimate in tests).
TokenCounter = Callable[[Sequence[Message]], int]


def default_media_opener(path: str) -> MediaReader:
    from omniagent_jax.media import open_video

    return open_video(path)


class MediaShortfall(Exception):
    """The media layer returned fewer frames than asked for (handled like a decode failure)."""


def default_media_errors() -> tuple[type[BaseException], ...]:
    from omniagent_jax.media import MediaError

    return (MediaError,)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Everything that shapes an episode besides the sample."""

    limits: EpisodeLimits = EpisodeLimits()
    budget: StepBudget = StepBudget()
    system_prompt_template: str = prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE
    strict_confidence: bool = False  # on for training (the reference's STRICT_CONFIDENCE_CHECK)
    mcq_mode: rewards.McqMode = "strict"
    purge_media_on_error: bool = True  # the reference's DELETE_MEDIA_WHEN_ERROR (on everywhere)
    consolidate: bool = True  # False keeps all media in context (an ablation, not the protocol)
    max_prompt_tokens: int | None = None  # token limit; needs a token counter

    def __post_init__(self) -> None:
        prompts.check_system_prompt_template(self.system_prompt_template)
        if self.mcq_mode not in rewards.MCQ_MODES:
            raise ValueError(f"mcq_mode must be one of {rewards.MCQ_MODES}, got {self.mcq_mode!r}")


@dataclasses.dataclass
class StepResult:
    """The outcome of one model turn."""

    step: int
    output: str
    turn: Turn | None
    reward: float = 0.0
    done: bool = False
    won: bool = False
    scored: bool = False
    is_action_valid: bool = True
    error_code: ErrorCode | None = None
    error_detail: str = ""
    media: MediaRecord | None = None
    end_reason: str | None = None
    prompt_tokens: int | None = None
    # Index of the first message this step changed; messages before it are as the policy saw them.
    first_changed: int = 0
    env_seconds: float = 0.0


class VideoEnvironment:
    """One episode over one video. Construct (probes the video), :meth:`reset`, then :meth:`step`.

    Invalid actions cost a step and, by default, purge the live media; a media decode failure ends
    the episode with ``MEDIA_DECODE_FAIL``; ``max_prompt_tokens`` + ``token_counter`` end it with
    ``TOKEN_LIMIT_EXCEEDED``.
    """

    def __init__(
        self,
        sample: Sample,
        config: EnvConfig = EnvConfig(),
        *,
        media_opener: MediaOpener | None = None,
        media_errors: tuple[type[BaseException], ...] | None = None,
        token_counter: TokenCounter | None = None,
        judge: rewards.Judge | None = None,
    ) -> None:
        rewards.check_ground_truth(sample.question_type, sample.answer, sample.options)
        if config.max_prompt_tokens is not None and token_counter is None:
            raise ValueError("max_prompt_tokens needs a token_counter")
        self.sample = sample
        self.config = config
        self.token_counter = token_counter
        self.judge = judge
        errors = media_errors if media_errors is not None else default_media_errors()
        self._media_errors = (*errors, MediaShortfall)
        self._reader = (media_opener or default_media_opener)(sample.video)
        info = self._reader.info
        if not getattr(info, "has_video", True) or not info.fps > 0 or not info.duration > 0:
            self._reader.close()
            raise ValueError(f"{sample.video} has no video stream to inspect "
                             f"(duration {info.duration}, fps {info.fps})")
        self.duration = float(info.duration)
        self.fps = float(info.fps)
        self.has_audio = bool(info.has_audio)
        self.max_steps = config.budget.effective_max_steps(self.duration, config.limits.max_clip)
        self.system_prompt = prompts.render_system_prompt(config.system_prompt_template, config.limits)
        self._messages: list[Message] = []
        self.step_count = 0
        self.done = False
        self.end_reason: str | None = None
        self._grace_turn = False
        self._unchanged = 0
        self._step_first_changed = 0

    # ------------------------------------------------------------------------------ lifecycle
    @property
    def video_info(self) -> Any:
        return self._reader.info

    @property
    def scorable(self) -> bool:
        """Whether an answer to this sample gets a real score: a ground truth exists and, for FF,
        a judge is configured. An episode that ends without an answer is then a real 0."""
        answer = self.sample.answer
        has_gt = answer is not None and not (isinstance(answer, str) and not answer.strip())
        return has_gt and (self.sample.major_type != "FF" or self.judge is not None)

    @property
    def messages(self) -> list[Message]:
        """The current history (a new list; the message dicts are never mutated in place)."""
        return list(self._messages)

    def observe(self) -> tuple[list[Message], int]:
        """The history to show the policy, and how many leading messages are unchanged since the
        previous ``observe`` (0 the first time): the engine can reuse their KV pages."""
        unchanged = self._unchanged
        self._unchanged = len(self._messages)
        return list(self._messages), unchanged

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "VideoEnvironment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> list[Message]:
        """Start the episode: ``[system, user(META + question + guide, notice)]``."""
        first = prompts.question_text(
            self.sample.question,
            self.sample.major_type,
            self.sample.options,
            duration=self.duration,
            fps=self.fps,
            has_audio=self.has_audio,
        )
        self._messages = [system_message(self.system_prompt), user_message([text_part(first)])]
        memory.set_notice(self._messages, prompts.notice_countdown(0, self.max_steps))
        self.step_count = 0
        self.done = False
        self.end_reason = None
        self._grace_turn = False
        self._unchanged = 0
        return self.messages

    # --------------------------------------------------------------------------------- helpers
    def _touch(self, index: int | None) -> None:
        if index is not None:
            self._unchanged = min(self._unchanged, index)
            self._step_first_changed = min(self._step_first_changed, index)

    def _append(self, message: Message) -> None:
        self._touch(len(self._messages))
        self._messages.append(message)

    def _failure_ends_episode(self) -> bool:
        """Whether a failed turn now ends the episode (else it costs the step and goes on)."""
        if self._grace_turn:
            return True
        if self.step_count >= self.max_steps:
            if self.config.budget.forced_answer:
                self._grace_turn = True
                return False
            return True
        return False

    # ------------------------------------------------------------------------------------ step
    def step(self, output: str) -> StepResult:
        """Apply one model turn (its raw text) and return what happened."""
        t0 = time.perf_counter()
        if self.done:
            # The history is final; an extra call must not alter the record.
            return StepResult(self.step_count, output, None, done=True, is_action_valid=False,
                              error_code=ErrorCode.ENV_ALREADY_DONE, end_reason=self.end_reason,
                              first_changed=len(self._messages))
        self._step_first_changed = len(self._messages)
        self._append(assistant_message(output))
        self.step_count += 1
        result = StepResult(self.step_count, output, None)
        try:
            turn = parse_action(output, strict_confidence=self.config.strict_confidence)
        except ActionError as e:
            return self._fail(result, e, parser=True, t0=t0)
        result.turn = turn
        action = turn.action
        try:
            if self._grace_turn or self.step_count >= self.max_steps:
                if action.type != ANSWER:
                    raise ActionError(ErrorCode.STEP_LIMIT_REACHED)
            if isinstance(action, Answer):
                if self.step_count == 1:
                    raise ActionError(ErrorCode.EARLY_ANSWER, prompts.EARLY_ANSWER_DETAIL)
                return self._answer(result, action, t0)
            if isinstance(action, GetFrames):
                message = self._get_frames(action)
            elif isinstance(action, GetAudio):
                message = self._get_audio(action)
            else:
                message = self._get_clip(action)
        except ActionError as e:
            return self._fail(result, e, t0=t0)
        except self._media_errors as e:  # type: ignore[misc]
            return self._decode_failure(result, action, e, t0)
        result.media = message["media"]
        self._append(message)
        return self._finish(result, t0)

    # ------------------------------------------------------------------------- media actions
    def _get_frames(self, act: GetFrames) -> Message:
        s, e, n = act.start, act.end, act.num
        if s < 0 or e > self.duration:
            raise ActionError(ErrorCode.FRAME_TS_OOB, prompts.detail_frames_oob(s, e, self.duration))
        if e < s:
            raise ActionError(ErrorCode.CLIP_NEG_LEN, prompts.detail_end_before_start(s, e))
        if n > self.config.limits.max_frames:
            raise ActionError(ErrorCode.TOO_MANY_FRAMES, prompts.detail_too_many_frames(n, self.config.limits.max_frames))
        if n < 1:
            raise ActionError(ErrorCode.INVALID_FRAME_NUM, prompts.DETAIL_FRAME_NUM)
        timestamps = np.linspace(s, e, n).tolist() if n > 1 else [s]
        frames = self._reader.frames(timestamps)
        if len(frames) != n:
            raise MediaShortfall(f"{len(frames)} of {n} frames")
        header = prompts.frames_header(s, e, n)
        parts = [text_part(header)]
        for t, frame in zip(timestamps, frames):
            parts += [text_part(prompts.frame_label(t)), media_part("image", frame)]
        return user_message(parts, MediaRecord("frames", s, e, header, tuple(timestamps), n))

    def _get_audio(self, act: GetAudio) -> Message:
        if not self.has_audio:
            raise ActionError(ErrorCode.NO_AUDIO)
        s, e = act.start, act.end
        if s < 0:
            raise ActionError(ErrorCode.AUDIO_RANGE, prompts.detail_start_negative(s))
        if e > self.duration:
            raise ActionError(ErrorCode.AUDIO_RANGE, prompts.detail_audio_end(e, self.duration))
        length = e - s
        if length <= 0:
            raise ActionError(ErrorCode.CLIP_NEG_LEN)
        if length < MIN_AUDIO_SECONDS:
            raise ActionError(ErrorCode.AUDIO_TOO_SHORT, prompts.detail_too_short(length, MIN_AUDIO_SECONDS))
        if length > self.config.limits.max_audio + LENGTH_LIMIT_SLACK:
            raise ActionError(ErrorCode.AUDIO_TOO_LONG, prompts.detail_too_long(length, self.config.limits.max_audio))
        wave = self._reader.audio(s, e)
        header = prompts.audio_header(s, e)
        return user_message([text_part(header), media_part("audio", wave)], MediaRecord("audio", s, e, header))

    def _get_clip(self, act: GetClip) -> Message:
        s, e = act.start, act.end
        if s < 0:
            raise ActionError(ErrorCode.CLIP_RANGE, prompts.detail_start_negative(s))
        if e > self.duration:
            raise ActionError(ErrorCode.CLIP_RANGE, prompts.detail_clip_end(e, self.duration))
        if e <= s:
            raise ActionError(ErrorCode.CLIP_NEG_LEN)
        length = e - s
        if length > self.config.limits.max_clip + LENGTH_LIMIT_SLACK:
            raise ActionError(ErrorCode.CLIP_TOO_LONG, prompts.detail_too_long(length, self.config.limits.max_clip))
        # The reference flags this one error as a *valid* action (so it keeps the live media); here
        # it is invalid like every other protocol error, so the latest media is purged too.
        if self.fps >= CLIP_MIN_FPS and length * self.fps < CLIP_MIN_SOURCE_FRAMES - CLIP_MIN_FRAMES_SLACK:
            raise ActionError(
                ErrorCode.CLIP_TOO_SHORT,
                prompts.detail_clip_too_short(length, CLIP_MIN_SOURCE_FRAMES / self.fps, CLIP_MIN_SOURCE_FRAMES),
            )
        clip = self._reader.clip(s, e)
        header = prompts.clip_header(s, e)
        record = MediaRecord(
            "clip", s, e, header, tuple(float(t) for t in clip.timestamps), has_audio=clip.audio is not None
        )
        return user_message([text_part(header), media_part("video", clip)], record)

    # ---------------------------------------------------------------------------------- answer
    def _answer(self, result: StepResult, act: Answer, t0: float) -> StepResult:
        try:
            score = rewards.score(
                self.sample.question_type,
                act.content,
                self.sample.answer,
                mcq_mode=self.config.mcq_mode,
                judge=self.judge,
                question=self.sample.question,
            )
        except ActionError as e:
            return self._fail(result, e, t0=t0)
        result.reward, result.won, result.scored = score.reward, score.won, score.scored
        result.done, result.end_reason = True, END_ANSWERED
        self._append(user_message([text_part(prompts.answer_feedback(score.won, score.scored))]))
        return self._finish(result, t0)

    # -------------------------------------------------------------------------------- failures
    def _fail(self, result: StepResult, error: ActionError, *, parser: bool = False, t0: float) -> StepResult:
        """An invalid action: one ``[ERROR]`` user message; the step is spent."""
        ends = self._failure_ends_episode()
        if parser:
            marker, detail = prompts.PARSE_ERROR_MARKER, prompts.parse_error_detail(error.detail)
        else:
            marker, detail = error.code.value, error.detail
        self._append(user_message([text_part(prompts.error_text(marker, detail, episode_continues=not ends))]))
        result.is_action_valid = False
        result.error_code, result.error_detail = error.code, detail
        if ends:
            result.done, result.end_reason = True, END_STEP_LIMIT
        return self._finish(result, t0)

    def _decode_failure(self, result: StepResult, action: Any, error: BaseException, t0: float) -> StepResult:
        """The video could not be decoded: not the model's fault, but the episode cannot go on."""
        what = {"get_frames": "frames", "get_audio": "audio", "get_clip": "clip"}[action.type]
        detail = prompts.detail_decode_failure(what, action.start, action.end)
        self._append(user_message([text_part(prompts.error_text(ErrorCode.MEDIA_DECODE_FAIL.value, detail,
                                                                 episode_continues=False))]))
        result.error_code, result.error_detail = ErrorCode.MEDIA_DECODE_FAIL, f"{detail}: {error}"
        result.done, result.end_reason = True, END_MEDIA_FAILURE
        return self._finish(result, t0)

    # -------------------------------------------------------------------------------- finalize
    def _finish(self, result: StepResult, t0: float) -> StepResult:
        """Consolidate, check the token limit, write the notice (the reference's order)."""
        if self.config.consolidate:
            keep = 0 if (self.config.purge_media_on_error and not result.is_action_valid) else 1
            self._touch(memory.consolidate(self._messages, keep_latest=keep))
        if self.token_counter is not None:
            result.prompt_tokens = int(self.token_counter(self._messages))
            limit = self.config.max_prompt_tokens
            if limit is not None and result.prompt_tokens > limit - TOKEN_LIMIT_TOLERANCE:
                last = self._messages[-1]
                text = prompts.token_limit_text(result.prompt_tokens, limit)
                self._messages[-1] = {**last, "content": [*last["content"], text_part(text)]}
                self._touch(len(self._messages) - 1)
                result.reward, result.won = 0.0, False
                result.error_code = ErrorCode.TOKEN_LIMIT_EXCEEDED
                result.error_detail = prompts.token_limit_detail(result.prompt_tokens, limit)
                result.done, result.end_reason = True, END_TOKEN_LIMIT
        if result.done:
            notice = prompts.notice_terminated(self.step_count, self.max_steps)
        elif self._grace_turn:
            notice = prompts.NOTICE_FORCED_ANSWER
        else:
            notice = prompts.notice_countdown(self.step_count, self.max_steps)
        self._touch(memory.set_notice(self._messages, notice))
        if result.done:
            self.done, self.end_reason = True, result.end_reason
        result.first_changed = self._step_first_changed
        result.env_seconds = time.perf_counter() - t0
        return result
