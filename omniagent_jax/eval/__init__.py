"""Batch evaluation (docs/protocol.md §11): `omniagent eval` over a dataset through the episode driver,
resumable and sharded, with the reference's output files; `sweep` (the turn-budget curve), `collect`
(best-of-N teacher trajectories as SFT step logs) and `export-sft` (the reference's filter).
Modules: dataset (selection, shards), rows (results.jsonl rows), results_file (crash-safe writes),
summary, metadata, run (playing), command (eval), merge, sweep, collect, cli (docs/architecture.md §2.7)."""
