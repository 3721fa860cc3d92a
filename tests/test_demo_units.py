"""The demo's parts without a browser: the policy hub (shared engine thread, per-session cancel and
sampling), examples and upload safety, the trace's rendering, media files, export ZIP, episode runs and
the `omniagent demo` command's checks."""

from __future__ import annotations

import argparse
import json
import pathlib
import threading
import time
import zipfile

import agent_helpers as h
import media_factory
import numpy as np
import pytest

from omniagent_jax.agent import prompts
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.cli import UsageError
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig
from omniagent_jax.agent.episode_card import resolve_episode_settings
from omniagent_jax.agent.messages import MediaRecord
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.cli import build_parser
from omniagent_jax.demo import render
from omniagent_jax.demo.examples import ASSETS, ExampleError, example_by_name, load_examples
from omniagent_jax.demo.export import REPORT, TRACE, export_zip
from omniagent_jax.demo.hub import PolicyHub, SamplingSettings, per_episode_backend, shared_backend
from omniagent_jax.demo.media_files import write_turn_media
from omniagent_jax.demo.session import EpisodeRun, Sessions
from omniagent_jax.demo.uploads import SessionFiles, UploadError, check_upload
from omniagent_jax.media import Clip, probe
from omniagent_jax.processing.policy_contract import PolicyOutput

EXAMPLE_NAME = "Test: colour at the tone (MCQ)"


def write_examples(folder: pathlib.Path) -> pathlib.Path:
    """An examples folder of the tests' own (the bundled one may change): a 12 s, 10 fps video with sound and one
    MCQ question whose answer the scripted replay gives."""
    folder.mkdir(parents=True, exist_ok=True)
    media_factory.make_video(folder / "video.mp4", duration=12.0, fps=10, width=160, height=120, audio=True)
    (folder / "examples.json").write_text(json.dumps([{
        "name": EXAMPLE_NAME, "video": "video.mp4", "question": "What colour is the square when the high tone plays?",
        "question_type": "MCQ", "options": ["A. Red", "B. Green", "C. Blue", "D. Yellow"], "answer": "C"}]))
    return folder


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory) -> pathlib.Path:
    return write_examples(tmp_path_factory.mktemp("examples"))


def turn(observation: str, think: str, action: dict, confidence: float = 0.5) -> str:
    return json.dumps({"observation": observation, "think": think, "confidence": confidence, "action": action})


SCRIPT = [turn("Nothing observed yet.", "Scan the whole video with a few frames first.",
               {"type": "get_frames", "start": 0, "end": 12, "num": 4}, 0.2),
          turn("A square moves right; it is red, then green, then blue.", "The high tone decides it: listen to the second half.",
               {"type": "get_audio", "start": 8, "end": 11}, 0.4),
          turn("A high-pitched tone plays at about 9-10 s.", "Check the square's colour while it plays.",
               {"type": "get_clip", "start": 8.5, "end": 10.5}, 0.6),
          turn("During the high tone the square is blue.", "Blue is option C.", {"type": "answer", "content": "C"}, 0.9)]


class HeldPolicy:
    """A concurrent policy whose turns finish only when the test releases them; records cancels and sampling."""

    def __init__(self) -> None:
        self.sampling = SamplingSettings(1.0, 1.0, 0, 7)
        self.seen: dict[str, SamplingSettings] = {}
        self.released: set[str] = set()
        self.cancelled: list[str] = []
        self.lock = threading.Lock()

    def generate(self, messages, *, unchanged_prefix=0, seed=None):
        raise NotImplementedError

    def submit(self, key, messages, *, unchanged_prefix=0, seed=None):
        self.seen[key] = self.sampling

    def collect(self, timeout=None):
        time.sleep(timeout or 0)
        with self.lock:
            done = [k for k in self.seen if k in self.released]
            for k in done:
                del self.seen[k]
        return [(k, PolicyOutput(f"out {k}")) for k in done]

    def cancel(self, key):
        self.cancelled.append(key)
        self.seen.pop(key, None)


# --------------------------------------------------------------------------------------- hub
def test_hub_cancels_one_clients_turn_and_applies_each_clients_sampling():
    policy = HeldPolicy()
    hub = PolicyHub(policy)
    try:
        a, b = hub.client(SamplingSettings(0.5, 0.9, 5, 11)), hub.client(SamplingSettings(1.5, 0.8, 0, 22))
        a.submit("e#1", [{"role": "user", "content": "x"}])
        b.submit("e#1", [{"role": "user", "content": "y"}])
        h.wait_for(lambda: len(policy.seen) == 2)
        assert {k: s.max_new_tokens for k, s in policy.seen.items()} == {"c0:e#1": 11, "c1:e#1": 22}
        assert policy.sampling == SamplingSettings(1.0, 1.0, 0, 7)  # restored after each submit
        a.cancel("e#1")
        h.wait_for(lambda: policy.cancelled == ["c0:e#1"])
        assert hub.cancelled == 1 and hub.in_flight() == 1
        policy.released.update({"c0:e#1", "c1:e#1"})
        got = b.collect(5.0)
        assert [(k, o.text) for k, o in got] == [("e#1", "out c1:e#1")]
        assert a.collect(0.05) == []  # a cancelled turn never comes back
    finally:
        hub.close()


def test_hub_client_refused_after_close():
    hub = PolicyHub(HeldPolicy())
    hub.close()
    with pytest.raises(Exception, match="closed"):
        hub.client()


# --------------------------------------------------------------------------- examples, uploads
def test_examples_resolve_inside_their_folder(tmp_path):
    examples = load_examples()
    assert examples and all(e.video.is_relative_to(ASSETS) for e in examples.values())
    with pytest.raises(ExampleError, match="unknown example"):
        example_by_name(examples, "../../etc/passwd")
    (tmp_path / "examples.json").write_text(json.dumps([{"name": "x", "video": "../outside.mp4", "question": "q",
                                                         "question_type": "FF"}]))
    (tmp_path.parent / "outside.mp4").write_bytes(b"0")
    with pytest.raises(ExampleError, match="not a file inside"):
        load_examples(tmp_path)
    (tmp_path / "examples.json").write_text(json.dumps([{"name": "x", "video": "v.mp4"}]))
    (tmp_path / "v.mp4").write_bytes(b"0")
    with pytest.raises(ExampleError, match="entry 0: 'question'"):
        load_examples(tmp_path)
    (tmp_path / "examples.json").write_text("[{")
    with pytest.raises(ExampleError, match="not valid JSON"):
        load_examples(tmp_path)


def test_uploads_refuse_wrong_type_oversized_and_fake_containers(tmp_path, examples_dir):
    video = examples_dir / "video.mp4"
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(UploadError, match="not an accepted video type"):
        check_upload(text, 2**20)
    with pytest.raises(UploadError, match="over the 0 MB upload limit"):
        check_upload(video, 1000)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"<html>not a video</html>")
    with pytest.raises(UploadError, match="not a mp4 container"):
        check_upload(fake, 2**20)
    files = SessionFiles(tmp_path)
    kept = files.accept_upload(video, 2**24)
    assert kept.parent.parent == files.path and kept.read_bytes() == video.read_bytes()
    files.close()
    assert not files.path.exists()


# ------------------------------------------------------------------------- media, render, export
def test_turn_media_files_are_playable(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    record = MediaRecord("frames", 0.0, 1.0, "h", (0.0, 1.0), 2)
    files = write_turn_media(tmp_path / "media", 1, record, [{"type": "image", "image": f} for f in frames])
    assert [f["file"] for f in files] == ["media/step01_frame00.jpg", "media/step01_frame01.jpg"]
    clip = Clip(frames=np.repeat(frames, 2, axis=0), timestamps=np.arange(4) / 2, fps=2.0, audio=audio)
    files = write_turn_media(tmp_path / "media", 2, MediaRecord("clip", 0.0, 2.0, "h"),
                             [{"type": "audio", "audio": audio}, {"type": "video", "video": clip}])
    assert [f["kind"] for f in files] == ["audio", "video"]
    info = probe(tmp_path / files[1]["file"])
    assert info.has_audio and info.width == 64 and info.num_frames == 4
    assert probe(tmp_path / files[0]["file"]).has_audio


def fake_trace() -> dict:
    step = {"step": 1, "action_type": "get_frames", "action": {"type": "get_frames", "start": 1.0, "end": 3.0, "num": 2},
            "observation": "<script>alert(1)</script>", "think": "t", "confidence": 0.5, "reward": 0.0,
            "error_code": None, "error_detail": "", "tokens": {"prompt": 100, "cached": 75, "prefilled": 25},
            "seconds": {}, "media": {"kind": "frames", "start": 1.0, "end": 3.0, "timestamps": [1.0, 3.0],
                                     "files": [{"kind": "image", "file": "media/a.jpg", "t": 1.0}]}}
    bad = {"step": 2, "action_type": "invalid", "action": None, "observation": None, "output": "garbage", "reward": 0.0,
           "error_code": "PARSE_ERROR", "error_detail": "not JSON", "tokens": {}, "seconds": {}, "media": None}
    clip = {**step, "step": 3, "action_type": "get_clip", "media": {"kind": "clip", "start": 4.0, "end": 6.0, "files": []}}
    return {"status": "running", "video": {"name": "v.mp4", "duration": 10.0, "fps": 5.0, "width": 4, "height": 4,
                                           "has_audio": True}, "question": {"question": "q"}, "steps": [step, bad, clip]}


def test_rendering_escapes_model_text_and_draws_spans_and_kv_reuse():
    trace = fake_trace()
    cards = render.trace_html(trace, lambda p: "/f/" + p)
    assert "<script>" not in cards and "&lt;script&gt;" in cards
    assert cards.count("data-testid='step-card'") == 3 and "PARSE_ERROR" in cards and "/f/media/a.jpg" in cards
    assert "75 reused from the KV cache, 25 prefilled (75% reused)" in cards
    assert "Over 2 turn(s): 200 prompt tokens, 150 reused from the KV cache (75%), 50 prefilled." in cards
    timeline = render.timeline_html(trace)
    assert "data-spans='2'" in timeline and timeline.count("class='oa-span'") == 3  # two frame ticks, one clip bar
    assert "turn 4 generating" in render.status_line(trace)
    assert "no video" in render.timeline_html({}).lower()


def test_export_zip_holds_report_trace_and_only_fetched_media(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.jpg").write_bytes(b"jpg")
    (tmp_path / "media" / "other.jpg").write_bytes(b"not fetched")
    out = export_zip(fake_trace(), tmp_path, tmp_path / "x.zip")
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["media/a.jpg", REPORT, TRACE]
        report = z.read(REPORT).decode()
        assert "src='media/a.jpg'" in report and "http" not in report.replace("http-equiv", "")
        assert json.loads(z.read(TRACE))["steps"][1]["error_code"] == "PARSE_ERROR"


# ----------------------------------------------------------------------------------- sessions
def play(backend, sample, tmp_path, **kw) -> EpisodeRun:
    config = EnvConfig(budget=StepBudget(max_steps=6, dynamic=False))
    return EpisodeRun(sample, config, backend, SamplingSettings(1.0, 1.0, 0, 16), run_dir=tmp_path,
                      video={"name": "video.mp4", "duration": 12.0}, **kw)


def test_episode_run_streams_each_turn_with_its_media(tmp_path, examples_dir):
    sample = Sample(video=str(examples_dir / "video.mp4"), question_type="MCQ", question="Colour?",
                    options=("A. Red", "B. Green", "C. Blue"), answer="C")
    run = play(per_episode_backend("s", "scripted", lambda s: ScriptedPolicy(SCRIPT)), sample, tmp_path)
    seen = [len(t["steps"]) for t in run.updates()]
    trace = run.snapshot()
    assert seen[0] == 0 and seen[-1] == 4 and seen == sorted(seen)
    assert trace["status"] == "answered" and trace["result"]["final_answer"] == "C" and trace["result"]["total_reward"] == 1.0
    kinds = [[f["kind"] for f in (s["media"] or {}).get("files", [])] for s in trace["steps"]]
    assert kinds == [["image"] * 4, ["audio"], ["video"], []]
    assert all((tmp_path / f["file"]).is_file() for s in trace["steps"][:3] for f in s["media"]["files"])


def test_episode_run_reports_an_unreadable_video_and_stop_cancels(tmp_path, examples_dir):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes((examples_dir / "video.mp4").read_bytes()[:600])
    sample = Sample(video=str(corrupt), question_type="FF", question="What?")
    run = play(per_episode_backend("s", "scripted", lambda s: ScriptedPolicy(SCRIPT)), sample, tmp_path)
    list(run.updates())
    assert run.snapshot()["status"] == "error" and "MediaError" in run.snapshot()["result"]["error"]
    held = HeldPolicy()
    backend = shared_backend("held", "held", held)
    try:
        run = play(backend, Sample(video=str(examples_dir / "video.mp4"), question_type="FF", question="What?"), tmp_path)
        h.wait_for(lambda: held.seen)
        run.stop()
        assert run.finished.wait(5) and run.snapshot()["status"] == "stopped"
        h.wait_for(lambda: held.cancelled and backend.hub.in_flight() == 0)
    finally:
        backend.close()


def test_sessions_are_private_and_removed(tmp_path):
    sessions = Sessions(tmp_path)
    a, b = sessions.get("a"), sessions.get("b")
    assert a.files.path != b.files.path and sessions.get("a") is a
    assert sessions.stop("a") is False  # nothing running
    sessions.close("a")
    assert not a.files.path.exists() and b.files.path.exists() and len(sessions) == 1
    sessions.max_idle_seconds = 0.0  # a session nobody closed goes once idle
    time.sleep(0.01)
    sessions.get("c")
    assert not b.files.path.exists() and len(sessions) == 1


# ---------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must be in [0, 65535]"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
    (["--concurrency", "0"], "--concurrency must be >= 1"),
    (["--policy", "scripted"], "--policy scripted needs --scripted-outputs"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--page-size", "0"], "--page-size must be >= 1"),
])
def test_demo_command_rejects_bad_arguments_before_loading(argv, message, capsys):
    from omniagent_jax.cli import main

    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"omniagent demo: error: {err[0].split('error: ', 1)[1]}"] and message in err[0]


def test_demo_command_needs_an_endpoint_for_the_openai_policy(tmp_path, monkeypatch, capsys):
    from omniagent_jax.cli import main

    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ("OMNIAGENT_OPENAI_URL", "OMNIAGENT_OPENAI_MODEL", "OMNIAGENT_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["demo", "--policy", "openai"]) == 2
    assert "omniagent demo: error: OpenAIPolicy needs an endpoint URL" in capsys.readouterr().err


def test_demo_command_needs_gradio(monkeypatch, capsys):
    import omniagent_jax.demo.cli as demo_cli
    from omniagent_jax.cli import main

    monkeypatch.setattr(demo_cli.importlib.util, "find_spec", lambda name: None)
    assert main(["demo"]) == 2
    assert "omniagent demo: error: the demo needs Gradio: pip install -e '.[demo]'" in capsys.readouterr().err


def test_demo_command_binds_loopback_without_share_by_default():
    from omniagent_jax.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.share, args.policy) == ("127.0.0.1", 8080, False, "jax")


def test_a_cut_short_video_passes_the_upload_check(tmp_path, examples_dir):
    # The browser tests upload a cut-short copy of a real video: it must reach the media layer (and fail there).
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((examples_dir / "video.mp4").read_bytes()[:600])
    assert check_upload(cut, 2**20) == cut


def test_page_plays_the_models_episode_card(tmp_path, examples_dir):
    """A checkpoint's episode card sets the page's default settings and every episode's prompt and confidence rule."""
    from omniagent_jax.agent.episode_card import write_episode_card
    from omniagent_jax.demo.app import DemoApp
    from omniagent_jax.demo.cli import build_backend

    prompt = "Toy rules: {max_frames} frames, {max_audio}s audio, {max_clip}s clips."
    write_episode_card(tmp_path, system_prompt_template=prompt, max_frames=12, max_steps=5, fixed_steps=True,
                       strict_confidence=True)
    episode = argparse.Namespace(model=str(tmp_path))
    resolve_episode_settings(episode)
    backend = per_episode_backend("s", "scripted", lambda s: ScriptedPolicy(SCRIPT))
    carded = DemoApp([backend], examples_dir=examples_dir, episode=vars(episode))
    plain = DemoApp([backend], examples_dir=examples_dir)
    try:
        config = carded._config(5, 12, 6, 4, False)
        assert config.system_prompt_template == prompt and config.strict_confidence
        config = plain._config(5, 12, 6, 4, False)  # no card: the defaults
        assert config.system_prompt_template == prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE and not config.strict_confidence
    finally:
        carded.close()
        plain.close()
    (tmp_path / "episode.json").write_text('{"max_frames": "many"}')
    args = build_parser().parse_args(["demo", "--model", str(tmp_path)])
    with pytest.raises(UsageError, match="episode.json: max_frames = 'many'"):
        build_backend(args)
