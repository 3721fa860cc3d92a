"""`omniagent demo` in a real browser: headless Debian chromium driven by Playwright (never `playwright install`),
plus the app's API through gradio_client and the server's upload and binding limits.

One app server for the module, with two policies: a scripted replay (slowed so turns arrive one by one)
and the tiny JAX model (random weights) on its engine, for Stop. Screenshots go to build/test-artifacts/demo.
Without chromium these tests skip, saying why; with OMNIAGENT_BROWSER_TESTS=1 (`.ci/run`) they fail instead.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time
import zipfile

import httpx
import pytest
from agent_helpers import wait_for
from test_demo_units import EXAMPLE_NAME, SCRIPT, write_examples

from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.demo.examples import ASSETS
from omniagent_jax.demo.hub import per_episode_backend, shared_backend

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

CHROMIUM = os.environ.get("OMNIAGENT_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("OMNIAGENT_BROWSER_TESTS") == "1"
ARTIFACTS = pathlib.Path(__file__).resolve().parents[1] / "build" / "test-artifacts" / "demo"
EXAMPLE = EXAMPLE_NAME  # the tests' own example (test_demo_units.write_examples): 12 s, 10 fps, sound; answer C
TURN_SECONDS = 0.5
JAX_TOKENS = 6000  # long enough that Stop lands mid-generation


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (OMNIAGENT_BROWSER_TESTS=1 requires the browser tests)")
    pytest.skip(reason)


class SlowScript(ScriptedPolicy):
    """The scripted replay, each turn taking a moment, so the page visibly streams."""

    def generate(self, messages, *, unchanged_prefix=0, seed=None):
        time.sleep(TURN_SECONDS)
        return super().generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> pathlib.Path:
    return write_examples(tmp_path_factory.mktemp("examples"))


@pytest.fixture(scope="module")
def demo(examples):
    try:
        import gradio  # noqa: F401
    except ImportError:
        unavailable("gradio is not installed (pip install -e '.[test]')")
    import jax.numpy as jnp
    from flax import nnx

    from omniagent_jax.demo.app import DemoApp
    from omniagent_jax.engine import Engine, SamplingParams
    from omniagent_jax.engine.policy import JaxPolicy
    from omniagent_jax.model import Thinker, config
    from omniagent_jax.processing import OmniProcessor

    model = Thinker(config.tiny(), dtype=jnp.float32, rngs=nnx.Rngs(0))
    engine = Engine(model, page_size=16, num_pages=1024, max_batch=4, decode_steps=4)
    jax_policy = JaxPolicy(engine, OmniProcessor.from_pretrained(),
                           SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, stop_token_ids=()))
    backends = [per_episode_backend("scripted", "scripted replay (test)", lambda s: SlowScript(SCRIPT)),
                shared_backend("jax", "tiny JAX model (random weights)", jax_policy)]
    app = DemoApp(backends, examples_dir=examples, max_upload_mb=1)
    _, url, _ = app.launch(port=free_port(), block=False)  # the default host
    yield app, url, jax_policy
    app.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"Debian's chromium is not at {CHROMIUM}: `apt-get install chromium` (`make test` installs it as root)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def open_page(browser, url):
    """A new browser session (its own context) on the demo page."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True).new_page()
    page.goto(url)
    page.wait_for_selector("#run")
    return page


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.get_by_role("option", name=option).click()


def status(page) -> str:
    return page.input_value("#status textarea")


def wait_status(page, text: str, timeout: float = 60) -> None:
    page.wait_for_function("t => document.querySelector('#status textarea').value.includes(t)", arg=text, timeout=timeout * 1000)


def test_server_binds_loopback_without_a_share_link(demo):
    app, url, _ = demo
    assert app.blocks.server_name == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    assert not app.blocks.share and app.blocks.share_url is None
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    outside = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1", "127.0.1.1"}
    for ip in outside:  # the same port on this machine's other addresses is closed
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((ip, port))


def test_demo_command_serves_the_page_on_loopback_and_stops_on_interrupt(tmp_path):
    import signal
    import subprocess
    import sys

    script = tmp_path / "turns.json"
    script.write_text(json.dumps(SCRIPT))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "omniagent_jax.cli", "demo", "--policy", "scripted", "--scripted-outputs",
                             str(script), "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/") or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.stderr.read()
        assert f"scripted replay of {script}" in httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).text  # the page's label
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:  # report where it is stuck: the demo dumps its threads on SIGUSR1
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            pytest.fail("omniagent demo did not stop within 120 s of SIGINT; its threads:\n" + proc.communicate()[1][-6000:])
    assert f"serving on http://127.0.0.1:{port} (local only; --share for a public link)" in err
    assert proc.returncode == 0 and "omniagent demo: stopped" in err, err


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_oversized_and_wrong_type_uploads_are_refused(demo, tmp_path):
    app, url, _ = demo
    r = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.mp4", b"\0" * (2 * 2**20), "video/mp4")}, timeout=30)
    assert r.status_code == 413, r.text
    from gradio_client import Client, handle_file

    notes = tmp_path / "notes.txt"
    notes.write_text("not a video")
    client = Client(url, verbose=False)
    try:
        out = client.predict(None, handle_file(str(notes)), "What?", "FF", "", "", "scripted", 32, 60, 300, 60, True,
                             1.0, 0.95, 20, 256, 0, api_name="/run_episode")
    except Exception as e:  # Gradio's own file-type check may refuse it first
        assert "file type" in str(e).lower() or "not an accepted video type" in str(e)
    else:
        assert "not an accepted video type" in out[2]


def test_only_example_videos_and_session_files_are_served(demo, examples):
    app, url, _ = demo
    files = {examples / "video.mp4": 200, examples / "examples.json": 403, ASSETS / "examples.json": 403,
             pathlib.Path(__file__): 403}
    for path, code in files.items():
        assert httpx.get(f"{url}gradio_api/file={path.resolve()}", timeout=10).status_code == code, path


@pytest.mark.parametrize("change, shown", [
    ({"example": None}, "pick an example or upload a video"),
    ({"question": " "}, "the question is empty"),
    ({"options": ""}, "needs options"),
    ({"top_p": 0.0}, "top p must be in (0, 1]"),
    ({"max_steps": 0}, "max_steps"),
])
def test_bad_inputs_are_reported_on_the_status_line(demo, change, shown):
    app, _, _ = demo
    example = app.examples[EXAMPLE]
    inputs = {"example": EXAMPLE, "upload": None, "question": example.question, "qtype": "MCQ",
              "options": "\n".join(example.options), "answer": "C", "backend": "scripted", "max_steps": 8, "max_frames": 60,
              "max_audio": 300, "max_clip": 60, "dynamic": True, "temperature": 1.0, "top_p": 0.95, "top_k": 20,
              "max_new_tokens": 64, "seed": 0} | change
    (page,) = list(app.run(*inputs.values()))
    assert page[2].startswith("❌") and shown in page[2], page[2]


def test_gradio_client_plays_a_whole_episode(demo):
    from gradio_client import Client

    app, url, _ = demo
    example = app.examples[EXAMPLE]
    out = Client(url, verbose=False).predict(EXAMPLE, None, example.question, "MCQ", "\n".join(example.options), "C", "scripted",
                                             32, 60, 300, 60, True, 1.0, 0.95, 20, 256, 0, api_name="/run_episode")
    cards, timeline, state, answer, reward, trace = out
    assert state.startswith("✅ answered") and answer == "C" and reward == "1.000"
    assert [s["action_type"] for s in trace["steps"]] == ["get_frames", "get_audio", "get_clip", "answer"]
    assert cards.count("data-testid='step-card'") == 4 and "data-spans='3'" in timeline


def test_episode_streams_step_cards_with_media_then_exports(browser, demo, tmp_path):
    _, url, _ = demo
    page = open_page(browser, url)
    choose(page, "#example", EXAMPLE)
    page.wait_for_selector("[data-testid=video-info]")
    assert "video.mp4 · 12.00 s · 10.00 fps · 160×120 · with audio" in page.inner_text("#video-card")
    page.click("#run")
    counts, deadline = [], time.monotonic() + 60
    while "answered" not in status(page):
        n = page.locator("[data-testid=step-card]").count()
        if not counts or counts[-1] != n:
            counts.append(n)
        assert len(counts) < 10 and time.monotonic() < deadline
        page.wait_for_timeout(40)
    # Cards arrive as their turns finish: the page showed some of them before the episode ended.
    assert counts == sorted(counts) and len([n for n in counts if 0 < n < 4]) >= 2, counts
    assert page.locator("[data-testid=step-card]").count() == 4
    assert page.input_value("#final-answer textarea") == "C" and page.input_value("#reward textarea") == "1.000"
    widths = page.eval_on_selector_all("[data-testid=frames] img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
    assert len(widths) == 4 and all(w > 0 for w in widths)
    for sel in ("[data-testid=audio]", "[data-testid=clip]"):
        assert page.request.get(url.rstrip("/") + page.get_attribute(sel, "src")).ok
    timeline = page.locator("[data-testid=timeline]")
    assert timeline.get_attribute("data-spans") == "3" and timeline.locator(".oa-span").count() == 4 + 1 + 1
    page.wait_for_function("document.querySelector('[data-testid=clip]').readyState >= 2")  # chromium decodes the clip
    page.screenshot(path=str(ARTIFACTS / "episode.png"), full_page=True)

    page.click("#export")
    page.wait_for_selector("#export-file a")
    with page.expect_download() as download:
        page.locator("#export-file a").first.click()
    path = tmp_path / "episode.zip"
    download.value.save_as(path)
    with zipfile.ZipFile(path) as z:
        names = sorted(z.namelist())
        trace = json.loads(z.read("trace.json"))
        report = z.read("report.html").decode()
    media = [f"media/step01_frame0{i}.jpg" for i in range(4)] + ["media/step02_audio.wav", "media/step03_clip.mp4"]
    assert names == sorted(["report.html", "trace.json", *media])
    assert trace["result"]["final_answer"] == "C" and all(m in report for m in media) and "<script" not in report


def test_corrupt_upload_shows_the_media_error_then_an_example_runs(browser, demo, examples, tmp_path):
    from omniagent_jax.media import MediaError, probe

    _, url, _ = demo
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes((examples / "video.mp4").read_bytes()[:600])
    with pytest.raises(MediaError) as error:
        probe(corrupt)
    page = open_page(browser, url)
    page.set_input_files("#upload input[type=file]", str(corrupt))
    page.wait_for_selector("[data-testid=video-error]")
    shown = page.inner_text("[data-testid=video-error]")
    assert error.value.message.split(":")[0] in shown and "corrupt.mp4" in shown
    page.click("#run")
    wait_status(page, "❌")
    choose(page, "#example", EXAMPLE)
    page.wait_for_selector("[data-testid=video-info]")
    page.click("#run")
    wait_status(page, "answered")
    page.screenshot(path=str(ARTIFACTS / "after_corrupt_upload.png"), full_page=True)


def set_number(page, elem_id: str, value: int, tries: int = 5) -> None:
    """Types ``value`` into a slider's number box until the slider holds it. A Run clicked before then sends the old
    value (fresh-clone runs: the 2-step episode played its default 5 steps), and an edit made while the accordion
    that holds the box is still opening can be dropped, so it is typed again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.locator(f"#{elem_id} input[type=number]")
    for _ in range(tries):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        try:
            page.wait_for_function("([id, v]) => document.querySelector(`#${id} input[type=range]`).value === v",
                                   arg=[elem_id, str(value)], timeout=2_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {elem_id} slider never took the value {value}")


def test_tiny_jax_episode_shows_kv_reuse_then_stop_cancels_one_session_only(browser, demo):
    app, url, policy = demo
    hub, engine = app.backends["jax"].hub, policy.engine
    a, b = open_page(browser, url), open_page(browser, url)
    for page in (a, b):
        choose(page, "#example", EXAMPLE)
        page.wait_for_selector("[data-testid=video-info]")
    choose(a, "#backend", "tiny JAX model (random weights)")
    a.get_by_text("Runtime settings").click()
    set_number(a, "max-steps", 2)
    set_number(a, "max-new-tokens", 16)
    a.click("#run")  # random weights: two invalid turns, the second reusing the first's prompt pages
    wait_status(a, "ended without an answer", timeout=120)
    assert a.locator("[data-testid=step-card]").count() == 2 and a.locator("[data-testid=error-code]").count() >= 1
    reused = a.locator("[data-testid=step-card]").nth(1).locator("[data-testid=kv]").inner_text()
    assert int(reused.split(": ")[1].split(" reused")[0]) > 0, reused
    a.screenshot(path=str(ARTIFACTS / "tiny_jax_episode.png"), full_page=True)

    set_number(a, "max-new-tokens", JAX_TOKENS)
    a.click("#run")

    def generated() -> list[int]:
        ids = [policy.engine_request(k) for k in hub.keys()]
        return [len(engine.generated(r) or []) for r in ids if r is not None]

    wait_for(lambda: generated() and generated()[0] > 8, timeout=120)  # decoding
    request = policy.engine_request(hub.keys()[0])
    b.click("#run")  # the other session's episode plays on while `a` stops
    before = generated()[0]
    a.click("#stop")
    # Generous bounds: on a loaded 2-core runner the engine may be mid-step (or mid-compile) when Stop lands.
    wait_status(a, "stopped", timeout=60)
    wait_for(lambda: not engine.has_work(), timeout=60)
    assert engine.generated(request) is None and request not in engine.finished
    assert before < JAX_TOKENS  # it was stopped mid-generation
    assert engine.pool.num_free == engine.pool.num_pages - 1  # the cancelled request's pages are back
    assert hub.in_flight() == 0 and hub.cancelled == 1
    wait_status(b, "answered")
    a.screenshot(path=str(ARTIFACTS / "stopped.png"), full_page=True)
    sessions = len(app.sessions)
    b.context.close()  # a closed tab's session folder goes
    wait_for(lambda: len(app.sessions) == sessions - 1, timeout=30)
