"""Writes the bundled examples: toy-world test tasks (docs/toy.md) as `assets/<split>_NNNNN.mp4` and
`assets/examples.json` (the demo's dropdown; its first entry is the episode `make run` plays).

The tasks come from the held-out test split at indices past the 100 the README's results are measured on,
so the shipped agent never trained on them and they are not part of its reported score. Videos are
rendered deterministically and checked by decoding.

    python tools/make_examples.py [--indices 122,100,105,107] [--out assets]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import tempfile

from omniagent_jax.toy import splits, world

DEFAULT_INDICES = "122,100,105,107"  # NUM (look, then listen) first: `make run`'s episode; then MCQ, TR, SIZE
NAMES = {"MCQ": "Colour at the high tone (MCQ: look, then listen)", "NUM": "Count the beeps (NUM: look, then listen)",
         "TR": "When is the square lit? (TR: scan, then look closer)", "SIZE": "How large is the square? (SIZE: look)"}


def example_entry(row: dict, video_name: str) -> dict:
    """A toy task row as an examples.json entry."""
    qtype = row["question_type"]
    return {"name": f"{NAMES[qtype]} — toy test task {row['extra_info']['index']}", "video": video_name,
            "question": row["question"], "question_type": qtype, "options": list(row.get("options") or []),
            "answer": str(row["answer"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--indices", default=DEFAULT_INDICES, help="test-split task indices, comma-separated")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[1] / "assets"))
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / splits.VIDEO_DIR).mkdir()
        for index in (int(i) for i in args.indices.split(",")):
            row = splits.ensure_video(pathlib.Path(tmp), "test", index)  # rendered and checked by decoding
            task = world.generate_task("test", index)
            shutil.copyfile(pathlib.Path(tmp) / row["video"], out / task.video_name)
            entries.append(example_entry(row, task.video_name))
    (out / "examples.json").write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for e in entries:
        print(f"{e['video']}: {e['question_type']} {e['question']!r} -> {e['answer']}")


if __name__ == "__main__":
    main()
