"""The toy pipeline (docs/toy.md §4): a shortened run through every stage, its resume, and its error paths."""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pytest
import yaml

from omniagent_jax.agent.episode_card import read_episode_card
from omniagent_jax.model.thinker import Thinker
from omniagent_jax.toy import settings
from omniagent_jax.toy.pipeline import report, stages
from omniagent_jax.toy.pipeline.__main__ import main
from omniagent_jax.toy.pipeline.config import PipelineError, load_pipeline_config
from omniagent_jax.toy.reading import reading_rows

SHORT = ["train_tasks=2", "test_tasks=1", "data_workers=2", "read_copy_steps=1", "read_frame_steps=1", "read_frame_words=true",
         "read_word_steps=1", "read_label_steps=1",
         "read_log_steps=1", "read_log_looks=event", "read_word_looks=single", "read_agent_steps=1", "read_rows_per_task=2",
         "eval_max_new_tokens=8", "eval_max_live=2",
         "sft=[max_steps=1, data.batch_size=2, 'data.buckets=[512]', checkpoint.every=0]",
         "rl=[steps=1, 'data.mix=[MCQ=1]', rollout.n=2, rollout.max_new_tokens=8, rollout.num_pages=256, rollout.max_batch=4, "
         "rollout.max_live=4, 'buckets=[1024]', rows_per_micro=4, checkpoint.every=0]"]


def _lines(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    cfg = load_pipeline_config(None, [f"run_dir={tmp_path_factory.mktemp('toy')}", *SHORT])
    return cfg, stages.run_pipeline(cfg)


def test_short_pipeline_runs_every_stage(short_run):
    cfg, report = short_run
    root = cfg.root
    assert list(report["stage_seconds"]) == ["data", "collect", "sft_data", "init", "read", "sft", "eval_sft", "rl",
                                            "eval_taura"]
    from omniagent_jax.toy import world

    # rendered by two processes, in task order
    assert [r["video"] for r in _lines(root / "data" / "train.jsonl")] == [
        f"videos/{world.generate_task('train', i).video_name}" for i in range(2)]
    assert len(_lines(root / "data" / "train.jsonl")) == 2 and len(_lines(root / "data" / "test.jsonl")) == 1
    assert [r["win"] for r in _lines(root / "collect" / "results.jsonl")] == [True, True]  # the expert wins both
    sft_rows = _lines(root / "sft.jsonl")
    assert len(sft_rows) >= 4 and all(r["extra_info"]["sample_index"] in (0, 1) for r in sft_rows)
    for model in (root / "init", root / "sft" / "export_jax", root / "taura" / "export_jax"):
        assert (model / "tokenizer.json").is_file() and (model / "config.json").is_file(), model
        assert read_episode_card(model)["max_frames"] == settings.MAX_FRAMES  # `--model DIR` plays the toy episode
    init = Thinker.from_pretrained(root / "init")  # its output head starts as the input embedding's transpose
    np.testing.assert_array_equal(init.lm_head.kernel[...], init.model.embed_tokens.embedding[...].T)
    for phase in ("frame", "word", "label", "log", "agent"):
        assert len(_lines(root / "read" / f"{phase}.jsonl")) == 4  # 2 rows per task (agent: per expert episode)
    for phase in ("frame", "word"):  # read_frame_words and the word phase: no labels in the output
        assert all(not re.search(r"\d\.\d\ds", r["output"]) for r in _lines(root / "read" / f"{phase}.jsonl"))
    assert len(_lines(root / "read" / "copy.jsonl")) == stages.COPY_BATCH  # one step's rows
    # read_log_looks=event reaches the log phase's rows (its seed: the pipeline's, as stage_read derives it)
    looks = reading_rows(_lines(root / "data" / "train.jsonl"), root / "data", frames=None, per_task=2,
                         seed=cfg.seed * 10 + 1, looks="event")
    assert _lines(root / "read" / "log.jsonl") == list(looks)
    words = reading_rows(_lines(root / "data" / "train.jsonl"), root / "data", frames=None, per_task=2,
                         seed=cfg.seed * 10 + 5, looks="single", words=True)
    assert _lines(root / "read" / "word.jsonl") == list(words)  # and read_word_looks=single the word phase's
    for phase in ("frame", "word", "label", "copy", "log", "agent"):
        assert [m["step"] for m in _lines(root / "read" / phase / "metrics.jsonl")] == [1]
    # each phase starts from the checkpoint before it; the agentic SFT from the last
    def init_of(run: str) -> str:
        return yaml.safe_load((root / run / "config.yaml").read_text())["init"]

    assert init_of("read/frame") == str(root / "init")
    assert init_of("read/word") == str(root / "read" / "frame" / "export_jax")
    assert init_of("read/label") == str(root / "read" / "word" / "export_jax")
    assert init_of("read/copy") == str(root / "read" / "label" / "export_jax")
    assert init_of("read/log") == str(root / "read" / "copy" / "export_jax")
    assert init_of("read/agent") == str(root / "read" / "log" / "export_jax")
    assert init_of("sft") == str(root / "read" / "agent" / "export_jax")
    assert len(_lines(root / "sft" / "metrics.jsonl")) == 1
    assert [m["step"] for m in _lines(root / "taura" / "metrics.jsonl")] == [1]
    for name in ("sft", "taura"):
        assert report["eval"][name]["num_samples"] == 1
        assert len(_lines(root / f"eval_{name}" / "results.jsonl")) == 1
    assert json.loads((root / "pipeline.json").read_text()) == report


def test_export_checkpoint_of_sft_run(short_run, tmp_path):
    """Any saved step of a run exports (what an accuracy-vs-step curve evaluates); its decoder is the run's."""
    from omniagent_jax.toy.pipeline.export import export_checkpoint
    from omniagent_jax.train.config import load_config

    cfg, _ = short_run
    scfg = load_config(cfg.sft_config, [f"init={cfg.root / 'init'}"])
    out = export_checkpoint(scfg, cfg.root / "sft", tmp_path / "step1", step=1)
    a, b = Thinker.from_pretrained(out), Thinker.from_pretrained(cfg.root / "sft" / "export_jax")
    np.testing.assert_array_equal(np.asarray(a.lm_head.kernel[...]), np.asarray(b.lm_head.kernel[...]))


def test_finished_stages_are_skipped(short_run, monkeypatch):
    cfg, _ = short_run

    def boom(*a, **k):
        raise AssertionError("a finished stage ran again")

    for target in ("omniagent_jax.toy.splits.write_split", "omniagent_jax.eval.collect.collect_command",
                   "omniagent_jax.train.sft.train", "omniagent_jax.train.rl.trainer.train",
                   "omniagent_jax.toy.pipeline.stages.run_omniagent"):
        monkeypatch.setattr(target, boom)
    report = stages.run_pipeline(cfg)
    assert report["eval"]["taura"]["num_samples"] == 1


@pytest.mark.parametrize("overrides, message", [
    (["nope=1"], "unknown pipeline key"),
    (["train_tasks"], "is not key=value"),
    (["train_tasks=0"], "train_tasks must be >= 1"),
    (["data_workers=0"], "data_workers must be >= 1"),
    (["test_tasks=two"], "test_tasks must be an integer"),
    (["sft=max_steps"], "sft must be a list of key=value"),
    (["sft_config=missing.yaml"], "sft_config missing.yaml not found"),
    (["head_from_embeddings=maybe"], "head_from_embeddings must be true or false"),
    (["read_frame_words=1"], "read_frame_words must be true or false"),
    (["read_word_steps=-1"], "read_word_steps must be >= 0"),
    (["read_copy_steps=-1"], "read_copy_steps must be >= 0"),
    (["read_frame_steps=-1"], "read_frame_steps must be >= 0"),
    (["read_label_steps=-2"], "read_label_steps must be >= 0"),
    (["read_agent_steps=-1"], "read_agent_steps must be >= 0"),
    (["read_log_steps=many"], "read_log_steps must be an integer"),
    (["read_log_looks=sideways"], "read_log_looks must be one of"),
    (["read_word_looks=sideways"], "read_word_looks must be one of"),
    (["read_rows_per_task=0"], "read_rows_per_task must be >= 1"),
])
def test_bad_pipeline_config(overrides, message):
    with pytest.raises(PipelineError, match=message):
        load_pipeline_config(None, overrides)


def test_run_dir_is_absolute():
    assert load_pipeline_config(None, ["run_dir=runs/toy"]).root == pathlib.Path("runs/toy").resolve()


def test_bad_config_files(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    (tmp_path / "file").write_text("")
    with pytest.raises(PipelineError, match="expected a mapping"):
        load_pipeline_config(str(tmp_path / "list.yaml"))
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_pipeline_config(str(tmp_path / "bad.yaml"))
    with pytest.raises(PipelineError, match="config file not found"):
        load_pipeline_config(str(tmp_path / "absent.yaml"))
    with pytest.raises(PipelineError, match="is a file"):
        load_pipeline_config(None, [f"run_dir={tmp_path / 'file'}"])


@pytest.mark.parametrize("entry", ["module", "omniagent"])
def test_cli_reports_a_bad_config_in_one_line(capsys, entry):
    from omniagent_jax.cli import main as omniagent

    assert (main(["nope=1"]) if entry == "module" else omniagent(["toy", "pipeline", "nope=1"])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("omniagent toy pipeline: error: unknown pipeline key")


def test_split_workers_must_be_positive(tmp_path):
    from omniagent_jax.toy import splits

    with pytest.raises(ValueError, match="workers must be >= 1"):
        splits.write_split(tmp_path, "test", 1, workers=0)


def test_stage_errors(tmp_path):
    cfg = load_pipeline_config(None, [f"run_dir={tmp_path}"])
    steps = tmp_path / "steps.jsonl"
    steps.write_text("")
    with pytest.raises(PipelineError, match="export-sft kept no rows"):
        stages.stage_sft_data(cfg, steps)
    with pytest.raises(PipelineError, match="eval of .* failed \\(exit 2\\)"):
        stages.stage_eval(cfg, tmp_path / "no_model", tmp_path / "no_test.jsonl", "x")
    rcfg = stages.rl_config(cfg, tmp_path / "init", tmp_path / "train.jsonl", "rl")
    with pytest.raises(PipelineError, match=f"has no checkpoint of step {rcfg.steps}"):
        stages.export_rl(rcfg, tmp_path / "export")


def test_results_table_from_eval_runs(short_run, tmp_path):
    cfg, _ = short_run
    sft = report.eval_metrics(cfg.root / "eval_sft")
    summary = json.loads((cfg.root / "eval_sft" / "summary.json").read_text())
    assert sft["accuracy"] == summary["accuracy_all_samples"] and sft["turns"] == summary["avg_steps"]
    assert sft["n"] == 1 and 0 <= sft["invalid"] <= 1
    a = {"accuracy": 0.5, "MCQ": 1.0, "TR": 0.0, "NUM": 0.5, "SIZE": 0.5, "reward": 0.6, "turns": 3.0, "invalid": 0.1, "n": 4}
    b = {**a, "accuracy": 0.7, "reward": 0.8}
    expert = report.scripted_metrics({"overall": {"n": 4, "accuracy": 1.0, "mean_reward": 0.9, "mean_steps": 2.5},
                                      "by_type": {t: {"accuracy": 1.0} for t in report.TYPES}})
    table = report.results_table([("TAURA", [a, b]), ("expert", [expert])]).splitlines()
    assert table[0].startswith("| agent | runs | overall | MCQ | TR | NUM | SIZE |")
    assert table[2] == ("| TAURA | 2 | 60 ± 10 % | 100 ± 0 % | 0 ± 0 % | 50 ± 0 % | 50 ± 0 % | 0.70 ± 0.10 | 3.00 ± 0.00 "
                        "| 10 ± 0 % |")
    assert table[3] == "| expert | 1 | 100 % | 100 % | 100 % | 100 % | 100 % | 0.90 | 2.50 | 0 % |"
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nkept\n")
    report.write_section(md, "first")
    report.write_section(md, "second")  # replaces its own section, keeps the rest
    assert md.read_text() == f"# Results\n\nkept\n\n{report.BEGIN}\nsecond\n{report.END}\n"


def test_log_entries_point_at_what_each_frame_showed():
    from omniagent_jax.toy.pipeline.perception import log_entries

    output = ('{"observation": "- 0.00s, magenta 4.27s, dot 8.55s, lit 13px 12.82s. magenta square lit at 4.27s.", '
              '"think": "t", "confidence": 0.5, "action": {"type": "answer", "content": "A"}}')
    entries = log_entries(output)
    assert [kind for _, kind, _ in entries] == ["-", "colour", "dot", "lit"]
    assert [output[i : i + 3] for i, _, _ in entries] == ["- 0", "mag", "dot", "lit"]
    assert [changed for _, _, changed in entries] == [False, True, True, True]
    runs = log_entries('{"observation": "- 0.00s, - 1.00s, red 2.00s, red 3.00s, blue 4.00s, dot 5.00s, dot 6.00s."}')
    assert [changed for _, _, changed in runs] == [False, False, True, False, True, True, False]
    for text in ("Nothing inspected yet.", "A steady high tone."):
        assert log_entries(json.dumps({"observation": text, "think": "t", "confidence": 0.5, "action": {}})) == []
    assert [kind for _, kind, _ in log_entries('{"observation": "- 0.00s, dot 4.27s."}')] == ["-", "dot"]
    assert log_entries('{"observation": "- 0.00s, dot 4.27s') == []  # cut off: not JSON
    bare = "- 0.00s, red 2.75s, - 5.50s"  # a reading row's output: the log itself
    assert [(bare[i:i + 3], kind, changed) for i, kind, changed in log_entries(bare)] == [
        ("- 0", "-", False), ("red", "colour", True), ("- 5", "-", True)]
    assert log_entries("-, red, -") == []  # words alone: no entry to score


def test_perception_report_scores_every_log_entry(short_run, capsys):
    from omniagent_jax.toy.pipeline import perception

    cfg, _ = short_run
    rows = _lines(cfg.root / "sft.jsonl")
    logged = [r for r in rows if perception.log_entries(r["output"])]
    assert logged  # the expert's frames turns
    report = perception.perception(str(cfg.root / "sft" / "export_jax"), rows)
    assert sum(t["entries"] for kinds in report.values() for t in kinds.values()) == sum(
        len(perception.log_entries(r["output"])) for r in logged)
    assert all(0 < t["p"] <= 1 and 0 <= t["argmax"] <= 1 for kinds in report.values() for t in kinds.values())
    assert any(kind.endswith(" new") for kinds in report.values() for kind in kinds)  # changes scored on their own
    first_turn = perception.perception(str(cfg.root / "sft" / "export_jax"), rows, step=2, limit=1)
    assert sum(t["entries"] for kinds in first_turn.values() for t in kinds.values()) == len(
        perception.log_entries(next(r for r in logged if r["step"] == 2)["output"]))
    assert perception.main(["--model", str(cfg.root / "sft" / "export_jax"), "--rows", str(cfg.root / "sft.jsonl")]) == 0
    assert "argmax right" in capsys.readouterr().out
