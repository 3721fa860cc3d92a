"""``omniagent run``: one video, one question, the OTA trace printed as it happens.

The top-level ``omniagent`` command wires :func:`add_run_arguments` and :func:`run_command` in; a
caller that owns a policy object passes it as ``policy=``, one whose policy is slow to build (the JAX
engine loading a checkpoint) passes ``load_policy=``, called only once every argument has been checked
and the video opened. Bad input exits 2 with one ``omniagent run: error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from omniagent_jax.agent import prompts, rewards
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, TokenCounter, VideoEnvironment
from omniagent_jax.agent.episode_card import EpisodeCardError, resolve_episode_settings
from omniagent_jax.agent.limits import (
    DEFAULT_MAX_AUDIO,
    DEFAULT_MAX_CLIP,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PROMPT_TOKENS,
    DEFAULT_MAX_STEPS,
    MIN_MAX_STEPS,
    EpisodeLimits,
)
from omniagent_jax.agent.policy import OpenAIPolicy, Policy, PolicyError, ScriptedPolicy
from omniagent_jax.agent.records import latest_run_record, write_json
from omniagent_jax.agent.runner import StepRecord, run_episode
from omniagent_jax.processing.policy_contract import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    sampling_problem,
)

DEFAULT_OUTPUT = pathlib.Path("inference_output") / "latest_run.json"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
_PREVIEW_CHARS = 400


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def one_line(message: object) -> str:
    """A message as one line (multi-line library errors joined with '; '), for `prog: error: ...`."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def report_usage_error(prog: str, error: object, err: TextIO | None = None) -> int:
    """Prints `prog: error: <one line>` (argparse's style) and returns the bad-input exit code."""
    print(f"{prog}: error: {one_line(error)}", file=err or sys.stderr)
    return EXIT_BAD_INPUT


# The policy a caller builds once the inputs are checked, with its prompt-length counter
# (which turns on --max-prompt-tokens).
PolicyLoader = Callable[[], tuple[Policy, TokenCounter]]


def _limit_number(text: str) -> float:
    """A limit as typed: ``300`` stays an int and ``300.0`` a float (the prompt prints it as typed)."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``run`` options to ``parser``."""
    q = parser.add_argument_group("question")
    q.add_argument("--video", required=True, help="video file")
    q.add_argument("--question", required=True, help="question text")
    q.add_argument("--options", nargs="*", default=None,
                   help="MCQ options, e.g. --options 'A. red' 'B. blue' (one string with newlines also works)")
    q.add_argument("--question-type", default=None,
                   help=f"one of {', '.join(prompts.QUESTION_TYPES)} (a dataset suffix such as MCQ_VideoMME is "
                        "allowed); default MCQ when --options is given, else FF")
    q.add_argument("--answer", default=None, help="ground truth, to score the final answer")

    p = parser.add_argument_group("policy")
    p.add_argument("--policy", choices=("scripted", "openai"), default=None,
                   help="scripted: replay --scripted-outputs; openai: an OpenAI-compatible endpoint")
    p.add_argument("--scripted-outputs", default=None,
                   help="model turns to replay: a JSON list of strings, or one turn per line")
    p.add_argument("--openai-url", default=None, help="endpoint, e.g. http://127.0.0.1:8000/v1, or several, comma-separated "
                   "(default $OMNIAGENT_OPENAI_URL; the key is read from $OMNIAGENT_OPENAI_API_KEY or .env)")
    p.add_argument("--openai-model", default=None, help="served model name (default $OMNIAGENT_OPENAI_MODEL)")
    p.add_argument("--temperature", type=float, default=None, help=f"default: the episode card's, else {DEFAULT_TEMPERATURE}")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"per turn (default: the model's episode card, else {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                   help="frame encoding sent to the endpoint (PNG is lossless; vLLM reads clip frames only as jpeg)")
    p.add_argument("--seed", type=int, default=0,
                   help="episode seed: turn t samples with a seed derived from (seed, t), sent to the endpoint as `seed`")

    e = parser.add_argument_group("episode")
    e.add_argument("--max-steps", type=int, default=None, help=f"step budget cap (MAX_STEPS; default {DEFAULT_MAX_STEPS})")
    e.add_argument("--fixed-steps", action="store_true", default=None,
                   help="use exactly --max-steps (default: dynamic min(MIN_MAX_STEPS + duration/max_clip, MAX_STEPS))")
    e.add_argument("--min-max-steps", type=int, default=MIN_MAX_STEPS)
    e.add_argument("--forced-answer", action="store_true",
                   help="after the last step without an answer, grant one extra turn that must answer")
    e.add_argument("--max-frames", type=int, default=None, help=f"default {DEFAULT_MAX_FRAMES}")
    e.add_argument("--max-audio", type=_limit_number, default=None, help=f"seconds (default {DEFAULT_MAX_AUDIO})")
    e.add_argument("--max-clip", type=_limit_number, default=None, help=f"seconds (default {DEFAULT_MAX_CLIP})")
    e.add_argument("--strict-confidence", action="store_true", default=None,
                   help="require the confidence key (as in training)")
    e.add_argument("--mcq-mode", choices=rewards.MCQ_MODES, default="strict")
    e.add_argument("--judge", action="store_true",
                   help="score FF answers with the LLM judge configured by $OMNIAGENT_JUDGE_URL/_MODEL/_API_KEY or .env")
    e.add_argument("--max-prompt-tokens", type=int, default=DEFAULT_MAX_PROMPT_TOKENS,
                   help="end the episode (TOKEN_LIMIT_EXCEEDED) when the prompt exceeds this minus 32 tokens; "
                        "active when the caller supplies a token counter")
    e.add_argument("--system-prompt-file", default=None,
                   help="system prompt template with the slots {max_frames}, {max_audio}, {max_clip}")
    parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + (
        "Episode flags left unset (--max-* limits, --max-steps, --fixed-steps, --strict-confidence, --max-new-tokens, "
        "--temperature, --system-prompt-file) take the values of the model's episode card (episode.json in a --model directory) "
        "when it has one, else the defaults shown.")
    e.add_argument("--output", default=str(DEFAULT_OUTPUT), help="where to write the run record")
    return parser


# ------------------------------------------------------------------------------------ inputs
def _options(raw: Sequence[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for item in raw or ():
        out += [line.strip() for line in item.replace("\\n", "\n").splitlines() if line.strip()]
    return tuple(out)


def build_sample(args: argparse.Namespace) -> Sample:
    video = pathlib.Path(args.video)
    if not video.is_file():
        raise UsageError(f"video not found: {video}")
    if not args.question.strip():
        raise UsageError("--question is empty")
    options = _options(args.options)
    qtype = args.question_type or ("MCQ" if options else "FF")
    try:
        rewards.check_ground_truth(qtype, args.answer, options)
    except ValueError as e:
        hint = " (pass them with --options)" if "needs options" in str(e) else ""
        raise UsageError(f"{e}{hint}") from None
    return Sample(video=str(video), question_type=qtype, question=args.question, options=options, answer=args.answer)


def build_config(args: argparse.Namespace, *, token_limit: bool = False) -> EnvConfig:
    """The episode the flags describe; episode flags left unset are filled first (the model's episode card, then
    the defaults)."""
    template = prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE
    try:
        resolve_episode_settings(args)
    except EpisodeCardError as e:
        raise UsageError(str(e)) from None
    try:
        if args.system_prompt_file:
            template = prompts.load_system_prompt_template(args.system_prompt_file)
        limits = EpisodeLimits(max_frames=args.max_frames, max_audio=args.max_audio, max_clip=args.max_clip)
        budget = StepBudget(max_steps=args.max_steps, dynamic=not args.fixed_steps,
                            min_max_steps=args.min_max_steps, forced_answer=args.forced_answer)
    except ValueError as e:
        # "max_steps must be ..." names the field; the user typed --max-steps
        field, _, rest = str(e).partition(" ")
        raise UsageError(f"--{field.replace('_', '-')} {rest}" if field in vars(args) else str(e)) from None
    if token_limit and args.max_prompt_tokens <= 0:
        raise UsageError(f"--max-prompt-tokens must be positive, got {args.max_prompt_tokens}")
    return EnvConfig(limits=limits, budget=budget, system_prompt_template=template,
                     strict_confidence=args.strict_confidence, mcq_mode=args.mcq_mode,
                     max_prompt_tokens=args.max_prompt_tokens if token_limit else None)


def check_sampling_flags(*, temperature: float, top_p: float, top_k: int, max_new_tokens: int, seed: int) -> None:
    """Sampling flag values within the ranges every policy takes (the engine's and the OpenAI API's);
    UsageError naming the flag otherwise."""
    problem = sampling_problem(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=seed)
    if problem is not None:
        field, message = problem
        raise UsageError(f"--{field.replace('_', '-')} {message}")


def check_sampling_args(args: argparse.Namespace) -> None:
    """The run command's sampling flags (see :func:`check_sampling_flags`)."""
    check_sampling_flags(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         max_new_tokens=args.max_new_tokens, seed=args.seed)


def read_scripted_outputs(path: str) -> list[str]:
    """A JSON list of strings, or one model turn per non-empty line."""
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read --scripted-outputs {p}: {e.strerror or e}") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            outputs = json.loads(stripped)
        except ValueError as e:
            raise UsageError(f"--scripted-outputs {p} is not a JSON list: {e}") from None
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise UsageError(f"--scripted-outputs {p} must be a JSON list of strings")
    else:
        outputs = [line for line in text.splitlines() if line.strip()]
    if not outputs:
        raise UsageError(f"--scripted-outputs {p} holds no turns")
    return outputs


def build_policy(args: argparse.Namespace) -> tuple[Policy, str]:
    if args.policy == "scripted":
        if not args.scripted_outputs:
            raise UsageError("--policy scripted needs --scripted-outputs FILE")
        return ScriptedPolicy(read_scripted_outputs(args.scripted_outputs)), "scripted"
    if args.policy == "openai":
        try:
            policy = OpenAIPolicy.from_env(
                url=args.openai_url, model=args.openai_model, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, max_tokens=args.max_new_tokens, image_format=args.image_format)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return policy, "openai"
    raise UsageError("no policy: pass --policy scripted|openai")


# ---------------------------------------------------------------------------------- printing
def _preview(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PREVIEW_CHARS else text[:_PREVIEW_CHARS] + "…"


def format_action(rec: StepRecord) -> str:
    act = rec.action
    if act is None:
        return "(unparsed)"
    if act["type"] == "get_frames":
        return f"get_frames {act['start']:.2f}s-{act['end']:.2f}s num={act['num']}"
    if act["type"] in ("get_audio", "get_clip"):
        return f"{act['type']} {act['start']:.2f}s-{act['end']:.2f}s"
    return f"answer {act['content']!r}"


def print_step(rec: StepRecord, env: VideoEnvironment, out: TextIO) -> None:
    r = rec.result
    conf = "n/a" if rec.turn is None or rec.turn.confidence is None else f"{rec.turn.confidence:.2f}"
    print(f"[Step {rec.step}/{env.max_steps}] {format_action(rec)} | confidence={conf} | reward={r.reward:.4f} | "
          f"gen={rec.generation_seconds:.2f}s env={r.env_seconds:.2f}s total={rec.step_wall_seconds:.2f}s", file=out)
    if rec.turn is not None:
        print(f"  observation: {_preview(rec.turn.observation)}", file=out)
        print(f"  think: {_preview(rec.turn.think)}", file=out)
    else:
        print(f"  output: {_preview(rec.output)}", file=out)
    if r.error_code is not None:
        print(f"  error: {r.error_code.value}" + (f": {r.error_detail}" if r.error_detail else ""), file=out)
    out.flush()


# -------------------------------------------------------------------------------------- main
class _LoadedCounter:
    """The token counter of a policy that is loaded after the environment has opened the video."""

    def __init__(self) -> None:
        self.count: TokenCounter | None = None

    def __call__(self, messages: Any) -> int:
        if self.count is None:
            raise RuntimeError("the policy's token counter is used before the policy is loaded")
        return self.count(messages)


def run_command(
    args: argparse.Namespace,
    policy: Policy | None = None,
    *,
    token_counter: TokenCounter | None = None,
    out: TextIO | None = None,
    load_policy: PolicyLoader | None = None,
) -> int:
    """Run one episode; returns the process exit code (0 done, 1 runtime failure, 2 bad input).

    ``policy`` overrides ``--policy``; ``token_counter`` (e.g. the processor's prompt length) turns on
    ``--max-prompt-tokens``. ``load_policy`` (the JAX engine: minutes for a 7B checkpoint) is called
    only after every argument is checked and the video is open; it returns the policy and its token
    counter, and raises :class:`UsageError` for a bad model.
    """
    out = out or sys.stdout
    prog = "omniagent run"
    try:
        sample = build_sample(args)
        config = build_config(args, token_limit=token_counter is not None or load_policy is not None)
        check_sampling_args(args)
        if pathlib.Path(args.output).is_dir():
            raise UsageError(f"--output {args.output} is a directory (pass the JSON file to write)")
        if policy is not None:
            policy_name = type(policy).__name__
        elif load_policy is None:
            policy, policy_name = build_policy(args)
        judge = None
        if args.judge:
            from omniagent_jax.agent.judge import LLMJudge

            judge = LLMJudge.from_env()
            if judge is None:
                raise UsageError("--judge needs OMNIAGENT_JUDGE_URL and OMNIAGENT_JUDGE_MODEL (environment or .env)")
    except UsageError as e:
        return report_usage_error(prog, e)

    from omniagent_jax.media import MediaError

    loaded = _LoadedCounter() if load_policy is not None else None
    try:
        env = VideoEnvironment(sample, config, judge=judge, token_counter=token_counter if loaded is None else loaded)
    except (MediaError, ValueError) as e:
        return report_usage_error(prog, f"cannot read video {sample.video}: {e}")
    with env:
        if load_policy is not None:
            try:
                policy, loaded.count = load_policy()
            except UsageError as e:
                return report_usage_error(prog, e)
            policy_name = type(policy).__name__
        print(f"video: {sample.video} ({env.duration:.2f}s, {env.fps:.2f} fps, audio={env.has_audio}); "
              f"type {sample.question_type}; budget {env.max_steps} steps; policy {policy_name}", file=out)
        try:
            result = run_episode(env, policy, seed=args.seed, on_step=lambda rec, e: print_step(rec, e, out))
        except PolicyError as e:
            print(f"omniagent run: error: the policy failed: {one_line(e)}", file=sys.stderr)
            return EXIT_FAILED
        runtime_config: dict[str, Any] = {
            "policy": policy_name,
            "dynamic_step_enabled": config.budget.dynamic,
            "tito_enabled": False,
            "max_steps": config.budget.max_steps,
            "effective_max_steps": env.max_steps,
            "min_max_steps": config.budget.min_max_steps,
            "forced_answer": config.budget.forced_answer,
            "max_frames": config.limits.max_frames,
            "max_audio_seconds": config.limits.max_audio,
            "max_clip_seconds": config.limits.max_clip,
            "mode": "OmniAgent",
            "strict_confidence": config.strict_confidence,
            "mcq_mode": config.mcq_mode,
            "system_prompt_file": args.system_prompt_file,
            "max_prompt_tokens": config.max_prompt_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "seed": args.seed,
            "kvcache_enabled": result.prefix_caching,
            "prefix_caching_enabled": result.prefix_caching,
            "prompt_token_ids_enabled": False,
            "internal_tito_enabled": False,
            "run_id": uuid.uuid4().hex,
        }
        record = latest_run_record(result, env, runtime_config=runtime_config, policy_name=policy_name)
    path = write_json(args.output, record)
    scored = "" if result.scored else " (not scored)"
    print(f"final answer: {result.final_answer!r} | reward={result.total_reward:.4f}{scored} | won={result.won} | "
          f"steps={result.steps_used}/{result.max_steps} | end={result.end_reason} | {result.wall_seconds:.2f}s", file=out)
    print(f"saved {path}", file=out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m omniagent_jax.agent.cli``) until the top-level CLI wires it in."""
    parser = add_run_arguments(argparse.ArgumentParser(prog="omniagent run", description=__doc__))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
