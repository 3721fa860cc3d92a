"""HTML of the demo's trace: step cards, the inspected-spans timeline, KV reuse bars, the video card.

Pure functions of the JSON trace (:mod:`omniagent_jax.demo.trace`), so the live page and the exported
report draw the same thing; `url(path)` turns a media file's trace path into a link (the live page's
file route, or the path inside the ZIP). Everything user- or model-written is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

UrlFor = Callable[[str], str]

ACTION_STYLE = {  # colour, icon, label per action type
    "get_frames": ("#2563eb", "🖼️", "frames"),
    "get_audio": ("#059669", "🔊", "audio"),
    "get_clip": ("#7c3aed", "🎬", "clip"),
    "answer": ("#d97706", "✅", "answer"),
    "invalid": ("#dc2626", "⚠️", "invalid"),
}

CSS = """
.oa-trace{font-family:system-ui,sans-serif;display:flex;flex-direction:column;gap:10px}
.oa-card{border:1px solid #e5e7eb;border-left:6px solid var(--c);border-radius:10px;padding:10px 12px;background:#fff;
 display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:12px;color:#111827}
.oa-head{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin-bottom:6px}
.oa-step{font-weight:700}.oa-badge{border-radius:999px;padding:1px 8px;font-size:12px;background:#f3f4f6;color:#111827}
.oa-act{background:var(--c);color:#fff}.oa-err{background:#fee2e2;color:#991b1b}.oa-good{background:#dcfce7;color:#166534}
.oa-field{font-size:13px;margin:3px 0;white-space:pre-wrap;word-break:break-word}.oa-field b{color:#4b5563}
.oa-media{display:flex;flex-direction:column;gap:6px}.oa-strip{display:flex;flex-wrap:wrap;gap:4px}
.oa-strip figure{margin:0;font-size:11px;text-align:center;color:#4b5563}
.oa-strip img{height:64px;border-radius:4px;display:block}
.oa-media audio,.oa-media video{width:100%;max-width:320px}
.oa-kv{display:flex;height:8px;border-radius:4px;overflow:hidden;background:#e5e7eb;margin-top:4px}
.oa-kv .hit{background:#10b981}.oa-kv .new{background:#f59e0b}.oa-kvtext{font-size:11px;color:#4b5563}
.oa-tl{font-family:system-ui,sans-serif;font-size:11px;color:#374151}
.oa-tl svg{width:100%;height:auto;background:#fafafa;border-radius:8px}
.oa-vcard{font-family:system-ui,sans-serif;border:1px solid #e5e7eb;border-radius:10px;padding:8px 10px;font-size:13px}
.oa-vcard.bad{border-color:#fca5a5;background:#fef2f2;color:#991b1b}.oa-vcard video{width:100%;max-height:200px}
.oa-empty{color:#6b7280;font-style:italic;font-family:system-ui,sans-serif}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def step_colour(step: int) -> str:
    """A distinct hue per step (golden-angle walk), the same on the cards and the timeline."""
    return f"hsl({(step * 137.5) % 360:.0f},70%,45%)"


def _kv_bar(tokens: dict[str, Any]) -> str:
    prompt, cached = tokens.get("prompt"), tokens.get("cached")
    if not prompt or cached is None:
        return "<div class='oa-kvtext'>KV reuse: not reported by this policy</div>"
    prefilled = tokens.get("prefilled")
    hit = 100.0 * cached / prompt
    new_text = f", {prefilled} prefilled" if prefilled is not None else ""
    return (f"<div class='oa-kvtext' data-testid='kv'>prompt {prompt} tokens: {cached} reused from the KV cache{new_text}"
            f" ({hit:.0f}% reused)</div><div class='oa-kv'><div class='hit' style='width:{hit:.1f}%'></div>"
            f"<div class='new' style='width:{100 - hit:.1f}%'></div></div>")


def _action_text(step: dict[str, Any]) -> str:
    act = step.get("action")
    if not act:
        return ""
    params = ", ".join(f"{k}={v}" for k, v in act.items() if k != "type")
    return f"{act['type']}({params})"


def _media_html(step: dict[str, Any], url: UrlFor) -> str:
    files = (step.get("media") or {}).get("files", [])
    images = [f for f in files if f["kind"] == "image"]
    out = []
    if images:
        figs = "".join(f"<figure><img src='{esc(url(f['file']))}' alt='frame at {f['t']:.2f}s'>"
                       f"<figcaption>{f['t']:.2f}s</figcaption></figure>" for f in images)
        out.append(f"<div class='oa-strip' data-testid='frames'>{figs}</div>")
    for f in files:
        if f["kind"] == "audio":
            out.append(f"<audio controls preload='metadata' data-testid='audio' src='{esc(url(f['file']))}'></audio>")
        elif f["kind"] == "video":
            out.append(f"<video controls preload='metadata' data-testid='clip' src='{esc(url(f['file']))}'></video>")
    media = step.get("media")
    if media and not files:
        out.append("<div class='oa-empty'>media no longer held (consolidated)</div>")
    return "".join(out) or "<div class='oa-empty'>no media this turn</div>"


def step_card(step: dict[str, Any], url: UrlFor, max_steps: int | None = None) -> str:
    kind = step["action_type"]
    colour, icon, label = ACTION_STYLE.get(kind, ACTION_STYLE["invalid"])
    of = f"/{max_steps}" if max_steps else ""
    badges = [f"<span class='oa-step' style='color:{step_colour(step['step'])}'>Step {step['step']}{of}</span>",
              f"<span class='oa-badge oa-act'>{icon} {label}</span>"]
    if step.get("confidence") is not None:
        badges.append(f"<span class='oa-badge'>confidence {step['confidence']:.2f}</span>")
    reward = step.get("reward", 0.0)
    badges.append(f"<span class='oa-badge {'oa-good' if reward > 0 else ''}'>reward {reward:.3f}</span>")
    if step.get("error_code"):
        badges.append(f"<span class='oa-badge oa-err' data-testid='error-code'>{esc(step['error_code'])}</span>")
    fields = []
    if step.get("observation") is not None:
        fields.append(f"<div class='oa-field'><b>Observation:</b> {esc(step['observation'])}</div>")
        fields.append(f"<div class='oa-field'><b>Think:</b> {esc(step['think'])}</div>")
        fields.append(f"<div class='oa-field'><b>Action:</b> <code>{esc(_action_text(step))}</code></div>")
    else:
        text = step.get("output", "")
        short = text if len(text) <= 600 else text[:600] + "…"
        fields.append(f"<div class='oa-field'><b>Unparsed output:</b> {esc(short)}</div>")
    if step.get("error_detail"):
        fields.append(f"<div class='oa-field oa-err'>{esc(step['error_detail'])}</div>")
    secs = step.get("seconds", {})
    timing = f"generation {secs.get('generation', 0):.2f}s · environment {secs.get('env', 0):.2f}s"
    return (f"<div class='oa-card' data-testid='step-card' data-step='{step['step']}' data-action='{esc(kind)}' "
            f"style='--c:{colour}'><div><div class='oa-head'>{''.join(badges)}</div>{''.join(fields)}"
            f"{_kv_bar(step.get('tokens', {}))}<div class='oa-kvtext'>{timing}</div></div>"
            f"<div class='oa-media'>{_media_html(step, url)}</div></div>")


def trace_html(trace: dict[str, Any], url: UrlFor) -> str:
    steps = trace.get("steps", [])
    if not steps:
        return "<div class='oa-empty'>The step cards appear here as each turn finishes.</div>"
    max_steps = (trace.get("result") or {}).get("max_steps") or trace.get("max_steps")
    return f"<div class='oa-trace'>{kv_summary(steps)}{''.join(step_card(s, url, max_steps) for s in steps)}</div>"


def kv_summary(steps: list[dict[str, Any]]) -> str:
    """The episode's prompt tokens: how many came from the KV cache and how many were prefilled."""
    reported = [s["tokens"] for s in steps if s.get("tokens", {}).get("cached") is not None and s["tokens"].get("prompt")]
    if not reported:
        return ""
    prompt, cached = sum(t["prompt"] for t in reported), sum(t["cached"] for t in reported)
    prefilled = sum(t.get("prefilled") or 0 for t in reported)
    return (f"<div class='oa-kvtext' data-testid='kv-summary'>Over {len(reported)} turn(s): {prompt} prompt tokens, {cached} "
            f"reused from the KV cache ({100.0 * cached / prompt:.0f}%), {prefilled} prefilled.</div>")


def timeline_html(trace: dict[str, Any]) -> str:
    """An SVG of the whole video: frames as ticks, audio and clips as bars in their lanes, coloured by step."""
    duration = float((trace.get("video") or {}).get("duration") or 0.0)
    if duration <= 0:
        return "<div class='oa-empty'>No video.</div>"
    width, left, right = 800.0, 58.0, 24.0
    span = width - left - right
    lanes = {"frames": 18.0, "audio": 44.0, "clip": 70.0}

    def x(t: float) -> float:
        return left + span * min(max(t, 0.0), duration) / duration

    parts = [f"<text x='4' y='{y + 12}'>{name}</text><rect x='{left}' y='{y}' width='{span}' height='16' fill='#eef2f7' rx='3'/>"
             for name, y in lanes.items()]
    for k in range(6):
        t = duration * k / 5
        parts.append(f"<line x1='{x(t):.1f}' y1='12' x2='{x(t):.1f}' y2='92' stroke='#d1d5db' stroke-dasharray='2,2'/>"
                     f"<text x='{x(t):.1f}' y='104' text-anchor='middle'>{t:.1f}s</text>")
    spans = 0
    for step in trace.get("steps", []):
        media = step.get("media")
        if not media:
            continue
        colour, n, y = step_colour(step["step"]), step["step"], lanes[media["kind"]]
        title = f"<title>step {n}: {esc(media['kind'])} {media['start']:.2f}-{media['end']:.2f}s</title>"
        if media["kind"] == "frames":
            for t in media.get("timestamps", []):
                parts.append(f"<rect class='oa-span' data-step='{n}' x='{x(t) - 1.5:.1f}' y='{y - 3}' width='3' height='22' "
                             f"fill='{colour}'>{title}</rect>")
        else:
            w = max(x(media["end"]) - x(media["start"]), 3.0)
            parts.append(f"<rect class='oa-span' data-step='{n}' x='{x(media['start']):.1f}' y='{y}' width='{w:.1f}' height='16' "
                         f"fill='{colour}' opacity='0.85' rx='3'>{title}</rect>")
        spans += 1
    svg = f"<svg viewBox='0 0 {width:.0f} 110' data-testid='timeline' data-spans='{spans}'>{''.join(parts)}</svg>"
    return f"<div class='oa-tl'>{svg}<div>Where the agent looked: {spans} inspected span(s), coloured by step.</div></div>"


def video_card(info: dict[str, Any] | None, *, error: str | None = None, video_url: str | None = None) -> str:
    """Duration, fps, size and audio of the chosen video, or the reason it cannot be read."""
    if error is not None:
        return f"<div class='oa-vcard bad' data-testid='video-error'>⚠️ {esc(error)}</div>"
    if not info:
        return "<div class='oa-vcard oa-empty'>Pick an example or upload a video.</div>"
    player = f"<video controls preload='metadata' src='{esc(video_url)}'></video>" if video_url else ""
    audio = "with audio" if info.get("has_audio") else "no audio"
    return (f"<div class='oa-vcard' data-testid='video-info'>{player}<div>🎞️ <b>{esc(info['name'])}</b> · "
            f"{info['duration']:.2f} s · {info['fps']:.2f} fps · {info['width']}×{info['height']} · {audio}</div></div>")


def status_line(trace: dict[str, Any]) -> str:
    """The one-line state: running (with the step), answered, stopped, ended otherwise, or failed."""
    state, steps, result = trace.get("status", "idle"), trace.get("steps", []), trace.get("result") or {}
    if state == "running":
        return f"⏳ running — {len(steps)} step(s) done, turn {len(steps) + 1} generating…"
    if state == "answered":
        return f"✅ answered in {len(steps)} step(s): {result.get('final_answer', '')!r}"
    if state == "stopped":
        return f"⏹️ stopped after {len(steps)} step(s) (the engine request was cancelled)"
    if state == "error":
        return f"❌ failed: {result.get('error') or trace.get('error', '')}"
    if state == "ended":
        return f"🏁 ended without an answer: {result.get('end_reason')}"
    return "ready"


def report_html(trace: dict[str, Any], url: UrlFor) -> str:
    """A self-contained page (inline CSS, no scripts, no network): question, result, timeline, cards."""
    q, result = trace.get("question", {}), trace.get("result") or {}
    options = "".join(f"<li>{esc(o)}</li>" for o in q.get("options", []))
    facts = (f"status: {esc(status_line(trace))}<br>final answer: <b>{esc(result.get('final_answer', ''))}</b> · "
             f"reward {result.get('total_reward', 0.0):.3f} · ground truth {esc(q.get('answer'))} · "
             f"policy {esc(trace.get('policy'))}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>OmniAgent episode</title><style>{CSS}"
            f"body{{max-width:1100px;margin:20px auto;font-family:system-ui,sans-serif}}</style></head><body>"
            f"<h1>OmniAgent episode</h1><p><b>Question ({esc(q.get('question_type'))}):</b> {esc(q.get('question'))}</p>"
            f"<ul>{options}</ul><p>{facts}</p>{video_card(trace.get('video'))}<h2>Timeline</h2>{timeline_html(trace)}"
            f"<h2>Steps</h2>{trace_html(trace, url)}</body></html>")
