"""toy.pipeline.episodes: answers, evidence and label copying read from an eval's results rows."""

from __future__ import annotations

import json

from omniagent_jax.toy.pipeline import episodes


def _frames(times: list[float], observation: str) -> dict:
    return {"observation": observation, "media": {"kind": "frames", "start": times[0], "end": times[-1], "timestamps": times}}


def _result(qtype: str, steps: list[dict], *, correct: bool, answer: str, beeps: int = 0) -> dict:
    event = {"colour": "red", "size": 9, "cell": 0, "start": 10.0, "end": 14.0, "pitch": "high", "beeps": beeps}
    return {"question_type": qtype, "extra_info": {"events": [event], "target": 0}, "steps": steps, "correct": correct,
            "final_answer": answer}


SCAN = [0.0, 5.0, 10.0, 15.0]
LOOK = [9.0, 10.0, 11.0, 12.0]
EPISODES = [
    # sees the lit frame at 10.00 s, copies every scan label and names its first dot; answers right
    _result("TR", [_frames(SCAN, "Nothing yet."), _frames(LOOK, "- 0.00s, - 5.00s, lit 10.00s, dot 15.00s. dot from 15.00s."),
                   {"observation": "- 9.00s, lit 10.00s, lit 12.00s, dot 12.00s. lit at 10.00s.", "media": None}],
            correct=True, answer="[[10.00, 14.00]]"),
    # frames only: for NUM that is not the evidence (the beeps are heard); one scan label wrong, "dot from" wrong
    _result("NUM", [_frames(SCAN, "Nothing yet."), {"observation": "- 0.00s, dot 5.00s, dot 10.00s, dot 15.00s. dot from 10.00s.",
                                                    "media": None}], correct=True, answer="3", beeps=3),
    # audio over the beeps (10.0–10.9 s) covers a NUM event; wrong answer
    _result("NUM", [{"observation": "x", "media": {"kind": "audio", "start": 10.5, "end": 12.0}}, {"observation": "y"}],
            correct=False, answer="3", beeps=3),
    # audio after the beeps end does not
    _result("NUM", [{"observation": "x", "media": {"kind": "audio", "start": 11.0, "end": 13.0}}, {"observation": "y"}],
            correct=False, answer="4", beeps=3),
]


def test_evidence_answers_and_labels():
    assert [episodes.covers_event(r) for r in EPISODES] == [True, False, True, False]
    by_type, labels = episodes.episode_stats(EPISODES)
    assert by_type["TR"].covered == [1, 1] and by_type["TR"].missed == [0, 0]
    assert by_type["NUM"].covered == [0, 1] and by_type["NUM"].missed == [1, 2]
    assert by_type["NUM"].answers == {"3": 2, "4": 1}
    scan, look = labels["scan"], labels["look"]
    assert (scan.right, scan.labels, scan.exact_logs, scan.logs) == (8, 8, 2, 2)
    assert (scan.dot_from_right, scan.dot_from) == (1, 2)
    assert (look.right, look.labels, look.exact_logs, look.logs) == (3, 4, 0, 1)  # 11.00 written as 12.00
    text = episodes.report(by_type, labels)
    assert "| NUM | 3 | `3` on 2 | 2 | 0 of 1 (0 %) | 1 of 2 (50 %) |" in text and "MCQ" not in text


def test_cli_reports_and_names_an_unreadable_file(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EPISODES))
    assert episodes.main([str(path)]) == 0
    assert "(4 episodes)" in capsys.readouterr().out
    bad = tmp_path / "broken.jsonl"
    bad.write_text("{not json\n")
    assert episodes.main([str(bad)]) == 2
    assert "broken.jsonl: cannot read eval results" in capsys.readouterr().err
