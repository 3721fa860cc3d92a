"""The Gradio page: pick or upload a video, ask, and watch each Observation–Thought–Action turn arrive.

Left: inputs (examples, upload with its video card, question, type, options, ground truth), runtime
settings, Run / Stop / Export, the status line, answer and reward. Right: the timeline of every span the
agent inspected, the step cards with the media each turn fetched and its KV reuse, and the JSON trace.
Episodes run through the episode driver (:mod:`omniagent_jax.demo.session`); a browser session's Stop
cancels only its own episode. Safety: see :meth:`DemoApp.launch` and :mod:`omniagent_jax.demo.uploads`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from omniagent_jax.agent import prompts, rewards
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig
from omniagent_jax.agent.limits import (
    DEFAULT_MAX_AUDIO,
    DEFAULT_MAX_CLIP,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_STEPS,
    MIN_MAX_STEPS,
    EpisodeLimits,
)
from omniagent_jax.demo import render
from omniagent_jax.demo.defaults import DEFAULT_CONCURRENCY, DEFAULT_HOST, DEFAULT_PORT
from omniagent_jax.demo.examples import ASSETS, Example, ExampleError, example_by_name, load_examples
from omniagent_jax.demo.export import export_zip
from omniagent_jax.demo.hub import Backend, SamplingSettings
from omniagent_jax.demo.session import EpisodeRun, Sessions, video_facts
from omniagent_jax.demo.uploads import ALLOWED_SUFFIXES, DEFAULT_MAX_UPLOAD_MB, UploadError, check_upload
from omniagent_jax.processing.policy_contract import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    sampling_problem,
)

TITLE = "OmniAgent (JAX) — active perception over video and audio"


class InputError(ValueError):
    """What the page's inputs lack, shown on the status line."""


def _options(text: str | None) -> tuple[str, ...]:
    return tuple(line.strip() for line in (text or "").splitlines() if line.strip())


class DemoApp:
    """The demo's page over `backends` (the first is the default), its sessions and its temp folder."""

    def __init__(self, backends: Sequence[Backend], *, examples: dict[str, Example] | None = None,
                 examples_dir: pathlib.Path = ASSETS, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, episode: dict[str, Any] | None = None) -> None:
        """``episode``: the model's episode card resolved (agent.episode_card): the settings' defaults, and the
        system prompt and confidence rule every episode of this page uses."""
        if not backends:
            raise ValueError("the demo needs at least one policy backend")
        self.backends = {b.name: b for b in backends}
        self.examples = load_examples(examples_dir) if examples is None else examples
        self.examples_dir = examples_dir
        self.max_upload_bytes = int(max_upload_mb * 2**20)
        self.concurrency = concurrency
        self.max_new_tokens = max_new_tokens
        self.episode = dict(episode or {})
        prompt_file = self.episode.get("system_prompt_file")
        self.system_prompt = (prompts.load_system_prompt_template(prompt_file) if prompt_file
                              else prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE)
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="omniagent-demo-"))
        self.sessions = Sessions(self.root)
        self.blocks = self._build()

    # ----------------------------------------------------------------------------- handlers
    def file_url(self, path: pathlib.Path) -> str:
        return f"/gradio_api/file={path}"

    def _video(self, example: str | None, upload: str | None, session_files=None) -> tuple[pathlib.Path, str]:
        """The chosen video's path and display name: the upload (checked, copied to the session) or the example."""
        if upload:
            if session_files is None:
                return check_upload(upload, self.max_upload_bytes), pathlib.Path(upload).name
            return session_files.accept_upload(upload, self.max_upload_bytes), pathlib.Path(upload).name
        if example:
            found = example_by_name(self.examples, example)
            return found.video, found.video.name
        raise InputError("pick an example or upload a video")

    def video_card(self, example: str | None, upload: str | None, request: gr.Request = None) -> str:
        """The card of the chosen video: its facts probed by the media layer, or why it cannot be read."""
        from omniagent_jax.media import MediaError, probe

        try:
            files = self.sessions.get(request.session_hash).files if request is not None and upload else None
            path, name = self._video(example, upload, files)
            info = probe(path)
        except InputError:
            return render.video_card(None)
        except (UploadError, ExampleError, MediaError) as e:
            return render.video_card(None, error=str(e))
        return render.video_card(video_facts(info, name), video_url=self.file_url(path))

    def pick_example(self, name: str | None) -> tuple:
        if not name:
            return render.video_card(None), "", "MCQ", "", "", None
        ex = example_by_name(self.examples, name)
        card = self.video_card(name, None)
        return card, ex.question, rewards.major_type(ex.question_type), "\n".join(ex.options), ex.answer or "", None

    def _sample(self, video: pathlib.Path, question: str, qtype: str, options: str, answer: str) -> Sample:
        if not (question or "").strip():
            raise InputError("the question is empty")
        opts = _options(options)
        gt = (answer or "").strip() or None
        try:
            rewards.check_ground_truth(qtype, gt, opts)
        except ValueError as e:
            raise InputError(str(e)) from None
        return Sample(video=str(video), question_type=qtype, question=question.strip(), options=opts, answer=gt)

    def _config(self, max_steps, max_frames, max_audio, max_clip, dynamic) -> EnvConfig:
        try:
            limits = EpisodeLimits(max_frames=int(max_frames), max_audio=int(max_audio), max_clip=int(max_clip))
            budget = StepBudget(max_steps=int(max_steps), dynamic=bool(dynamic), min_max_steps=min(int(max_steps), MIN_MAX_STEPS))
            return EnvConfig(limits=limits, budget=budget, system_prompt_template=self.system_prompt,
                             strict_confidence=bool(self.episode.get("strict_confidence", False)))
        except ValueError as e:
            raise InputError(str(e)) from None

    def run(self, example, upload, question, qtype, options, answer, backend, max_steps, max_frames, max_audio, max_clip,
            dynamic, temperature, top_p, top_k, max_new_tokens, seed, request: gr.Request = None) -> Iterator[tuple]:
        """The streaming handler: one episode; yields the page's outputs after every turn."""
        from omniagent_jax.media import MediaError, probe

        session = self.sessions.get(request.session_hash if request is not None else "api")
        if session.run is not None and not session.run.finished.is_set():
            yield self._page(session, {}, "⚠️ an episode is already running in this tab: press Stop first")
            return
        try:
            path, name = self._video(example, upload, session.files)
            sample = self._sample(path, question, qtype, options, answer)
            config = self._config(max_steps, max_frames, max_audio, max_clip, dynamic)
            settings = SamplingSettings(float(temperature), float(top_p), int(top_k), int(max_new_tokens))
            problem = sampling_problem(**dataclasses.asdict(settings), seed=int(seed))
            if problem is not None:
                raise InputError(f"{problem[0].replace('_', ' ')} {problem[1]}")
            chosen = self.backends.get(backend) or next(iter(self.backends.values()))
            facts = video_facts(probe(path), name)
        except (InputError, UploadError, ExampleError, MediaError) as e:
            yield self._page(session, {}, f"❌ {e}")
            return
        session.run = EpisodeRun(sample, config, chosen, settings, run_dir=session.files.new_run(), video=facts, seed=int(seed),
                                 extra={"max_steps": config.budget.max_steps, "dynamic_steps": config.budget.dynamic,
                                        "max_frames": config.limits.max_frames, "max_audio": config.limits.max_audio,
                                        "max_clip": config.limits.max_clip})
        for trace in session.run.updates():
            yield self._page(session, trace)

    def _page(self, session, trace: dict[str, Any], status: str | None = None) -> tuple:
        run_dir = session.run.run_dir if session.run is not None and trace else None
        result = trace.get("result") or {}
        reward = f"{result['total_reward']:.3f}" if "total_reward" in result else ""
        url = (lambda p: self.file_url(run_dir / p)) if run_dir else (lambda p: p)
        return (render.trace_html(trace, url), render.timeline_html(trace) if trace else "",
                status or render.status_line(trace), result.get("final_answer", ""), reward, trace or None)

    def stop(self, request: gr.Request = None) -> None:
        """Cancels this tab's episode; its streaming handler then shows it stopped (only that one writes the status,
        so a late reply here cannot overwrite the final state)."""
        self.sessions.stop(request.session_hash if request is not None else "api")

    def export(self, request: gr.Request = None) -> Any:
        """The ZIP of this session's latest episode (as it stands now), shown for download."""
        session = self.sessions.get(request.session_hash if request is not None else "api")
        if session.run is None:
            return gr.File(value=None, visible=False)
        path = export_zip(session.run.snapshot(), session.run.run_dir, session.run.run_dir / "omniagent_episode.zip")
        return gr.File(value=str(path), visible=True)

    def close_session(self, request: gr.Request = None) -> None:
        if request is not None:
            self.sessions.close(request.session_hash)

    # ------------------------------------------------------------------------------- layout
    def _build(self):
        first = next(iter(self.backends.values()))
        # Gradio's own copies of uploads (before ours are made in the session folder) are deleted within the hour.
        with gr.Blocks(title="OmniAgent demo", analytics_enabled=False, delete_cache=(1800, 1800)) as blocks:
            gr.Markdown(f"## 🎬 {TITLE}")
            banner = gr.Markdown(f"**Policy:** {first.label}", elem_id="policy-label")
            with gr.Row():
                with gr.Column(scale=2, min_width=360):
                    example = gr.Dropdown(list(self.examples), value=None, label="📚 Example", elem_id="example")
                    upload = gr.File(label=f"…or upload a video ({', '.join(ALLOWED_SUFFIXES)}; ≤ "
                                     f"{self.max_upload_bytes / 2**20:.0f} MB)", file_types=list(ALLOWED_SUFFIXES),
                                     type="filepath", elem_id="upload")
                    card = gr.HTML(render.video_card(None), elem_id="video-card")
                    question = gr.Textbox(label="❓ Question", lines=2, elem_id="question")
                    with gr.Row():
                        qtype = gr.Dropdown(list(prompts.QUESTION_TYPES), value="MCQ", label="Type", elem_id="qtype")
                        answer = gr.Textbox(label="✅ Ground truth (optional)", elem_id="answer")
                    options = gr.Textbox(label="📝 Options (MCQ, one per line)", lines=3, elem_id="options")
                    backend = gr.Dropdown([(b.label, b.name) for b in self.backends.values()], value=first.name,
                                          label="Policy", visible=len(self.backends) > 1, elem_id="backend")
                    with gr.Accordion("⚙️ Runtime settings", open=False):
                        ep = self.episode
                        max_steps = gr.Slider(1, 50, value=ep.get("max_steps", DEFAULT_MAX_STEPS), step=1, label="Max steps",
                                              elem_id="max-steps")
                        dynamic = gr.Checkbox(value=not ep.get("fixed_steps", False), elem_id="dynamic",
                                              label=f"Dynamic step budget: min({MIN_MAX_STEPS} + duration / max clip, max steps)")
                        max_frames = gr.Slider(1, 100, value=ep.get("max_frames", DEFAULT_MAX_FRAMES), step=1,
                                               label="Max frames per request")
                        max_audio = gr.Slider(1, 600, value=ep.get("max_audio", DEFAULT_MAX_AUDIO), step=1, label="Max audio (s)")
                        max_clip = gr.Slider(1, 120, value=ep.get("max_clip", DEFAULT_MAX_CLIP), step=1, label="Max clip (s)")
                        temperature = gr.Slider(0.0, 2.0, value=ep.get("temperature", DEFAULT_TEMPERATURE), step=0.05,
                                                label="Temperature")
                        top_p = gr.Slider(0.05, 1.0, value=DEFAULT_TOP_P, step=0.05, label="Top-p")
                        top_k = gr.Slider(0, 100, value=DEFAULT_TOP_K, step=1, label="Top-k (0: off)")
                        max_new = gr.Slider(16, 8192, value=self.max_new_tokens, step=16, label="Max new tokens per turn",
                                            elem_id="max-new-tokens")
                        seed = gr.Number(value=0, precision=0, label="Episode seed")
                    with gr.Row():
                        run_btn = gr.Button("🚀 Run", variant="primary", elem_id="run")
                        stop_btn = gr.Button("⏹️ Stop", variant="stop", elem_id="stop")
                        export_btn = gr.Button("📦 Export ZIP", elem_id="export")
                    status = gr.Textbox(label="Status", value="ready", interactive=False, elem_id="status")
                    with gr.Row():
                        final = gr.Textbox(label="🎯 Final answer", interactive=False, elem_id="final-answer")
                        reward = gr.Textbox(label="💰 Reward", interactive=False, elem_id="reward")
                    export_file = gr.File(label="Report ZIP", interactive=False, visible=False, elem_id="export-file")
                with gr.Column(scale=3, min_width=560):
                    gr.Markdown("### 🗺️ Where the agent looked")
                    timeline = gr.HTML(render.timeline_html({}), elem_id="timeline")
                    gr.Markdown("### 🧠 Observation → Thought → Action")
                    cards = gr.HTML(render.trace_html({}, str), elem_id="trace")
                    with gr.Accordion("{ } Full history (JSON)", open=False):
                        history = gr.JSON(elem_id="history")
            example.change(self.pick_example, example, [card, question, qtype, options, answer, upload])
            upload.upload(self.video_card, [example, upload], card)
            upload.clear(self.video_card, [example, upload], card)
            backend.change(lambda name: f"**Policy:** {self.backends[name].label}", backend, banner)
            inputs = [example, upload, question, qtype, options, answer, backend, max_steps, max_frames, max_audio, max_clip,
                      dynamic, temperature, top_p, top_k, max_new, seed]
            run_btn.click(self.run, inputs, [cards, timeline, status, final, reward, history], api_name="run_episode",
                          concurrency_limit=self.concurrency, concurrency_id="episodes")
            stop_btn.click(self.stop, None, None, api_name="stop", concurrency_limit=None)
            export_btn.click(self.export, None, export_file, api_name="export", concurrency_limit=None)
            blocks.unload(self.close_session)
        return blocks

    def launch(self, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, share: bool = False, block: bool = True):
        """Serves the page on `host` (loopback unless asked), without a public link unless `share`; uploads over
        the limit are refused by the server; only the example videos and the sessions' folders are served as files."""
        self.blocks.queue(default_concurrency_limit=self.concurrency)
        return self.blocks.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=not block, quiet=not block,
            max_file_size=self.max_upload_bytes, allowed_paths=[*(str(e.video) for e in self.examples.values()), str(self.root)],
            footer_links=["api"], theme=gr.themes.Soft(primary_hue="indigo"), css=render.CSS, show_error=False,
        )

    def close(self) -> None:
        """Stops every episode, the server and the backends; removes every session's files."""
        self.sessions.close_all()
        self.blocks.close()
        for backend in self.backends.values():
            backend.close()
        shutil.rmtree(self.root, ignore_errors=True)
