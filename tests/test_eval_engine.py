"""`omniagent eval --model` (the engine's continuous batching) and `omniagent eval --policy openai
--openai-url` against `omniagent serve` on the same tiny checkpoint, greedy: the same results.jsonl rows
apart from timings, cache statistics and the run's identity (`eval.rows.comparable_row`). The tiny model's
random weights never write a valid action, so every turn is an invalid one and each episode runs its
whole budget: the rows still carry every generated text, its token counts and the histories."""

from __future__ import annotations

import json

import eval_helpers as h
import pytest
from serve_helpers import POOL

from omniagent_jax.cli import main
from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server import ServerThread, create_app
from omniagent_jax.eval.rows import comparable_row
from omniagent_jax.processing import OmniProcessor

ENGINE = ["--page-size", str(POOL["page_size"]), "--num-pages", str(POOL["num_pages"]), "--max-batch", str(POOL["max_batch"]),
          "--decode-steps", str(POOL["decode_steps"]), "--no-compilation-cache"]
RUN = ["--temperature", "0", "--max-new-tokens", "6", "--max-steps", "2", "--sample-indices", "0,1,3"]


def test_eval_with_model_equals_eval_through_omniagent_serve(reference_pairs, tmp_path):
    _, model, path = reference_pairs("tiny.yaml")
    dataset = h.make_dataset(tmp_path / "data")
    direct, served = tmp_path / "direct", tmp_path / "served"
    assert main(["eval", "--dataset", str(dataset), "--output-dir", str(direct), "--fixed-steps", "--no-progress",
                 "--model", str(path), *ENGINE, *RUN]) == 0
    policy = JaxPolicy(Engine(model, **POOL), OmniProcessor.from_pretrained(path), SamplingParams())
    with ServerThread(create_app(policy, model_name="tiny")) as server:
        assert main(["eval", "--dataset", str(dataset), "--output-dir", str(served), "--fixed-steps", "--no-progress",
                     "--policy", "openai", "--openai-url", server.url, "--openai-model", "tiny", *RUN]) == 0
    policy.engine.pool.check_no_leak()
    a, b = h.read_results(direct / "results.jsonl"), h.read_results(served / "results.jsonl")
    a, b = (sorted(rows, key=lambda r: r["sample_index"]) for rows in (a, b))
    assert [r["status"] for r in a] == ["ok"] * 3 and all(r["steps_used"] == 2 for r in a)
    assert any(s["response"] for r in a for s in r["steps"])  # the model wrote text
    assert all(s["response_tokens"] > 0 and s["prompt_total_tokens"] > 0 for r in a for s in r["steps"])
    for x, y in zip(a, b):
        assert comparable_row(x) == comparable_row(y), x["sample_index"]
    summary = json.loads((direct / "summary.json").read_text())
    # the engine reused the KV of each episode's unchanged history on its second turn
    assert summary["total_cached_prompt_tokens"] > 0 and 0 < summary["tokens_reused_ratio"] < 1
    assert summary["samples_per_minute"] > 0
    meta = json.loads((direct / "run_metadata.json").read_text())
    assert meta["model_path"] == str(path) and len(meta["model_fingerprint"]) == 64
    assert json.loads((served / "run_metadata.json").read_text())["policy"] == "openai"


@pytest.mark.parametrize("argv, message", [
    (["--model", "/nonexistent/ckpt"], "--model /nonexistent/ckpt"),
    (["--policy", "openai"], "OpenAIPolicy needs an endpoint URL and a model name"),
    (["--policy", "scripted"], "--policy scripted needs --scripted-outputs"),
    (["--judge"], "--judge needs OMNIAGENT_JUDGE_URL and OMNIAGENT_JUDGE_MODEL"),
])
def test_policy_problems_exit_2_before_anything_is_played(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("OMNIAGENT_OPENAI_URL", raising=False)
    monkeypatch.delenv("OMNIAGENT_OPENAI_MODEL", raising=False)
    monkeypatch.delenv("OMNIAGENT_JUDGE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    dataset = h.make_dataset(tmp_path / "data")
    assert main(["eval", "--dataset", str(dataset), "--output-dir", str(tmp_path / "o"), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omniagent eval: error:") and message in err and "\n" not in err
    assert not (tmp_path / "o" / "results.jsonl").exists()
