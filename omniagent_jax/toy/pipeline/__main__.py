"""`python -m omniagent_jax.toy.pipeline [--config configs/toy/pipeline.yaml] [key=value ...]` (`make toy`;
also `omniagent toy pipeline`)."""

from __future__ import annotations

import argparse
import json
import sys

from omniagent_jax.agent.cli import report_usage_error
from omniagent_jax.toy.pipeline.config import PipelineError, add_pipeline_arguments, load_pipeline_config
from omniagent_jax.toy.pipeline.stages import run_pipeline

PROG = "omniagent toy pipeline"


def run_args(args: argparse.Namespace) -> int:
    """Runs the pipeline on parsed ``--config`` / overrides; exit 2 with one line on a bad config or a failed stage."""
    try:
        cfg = load_pipeline_config(args.config, args.overrides)
        report = run_pipeline(cfg)
    except PipelineError as e:
        return report_usage_error(PROG, e)
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniagent_jax.toy.pipeline", description=__doc__)
    add_pipeline_arguments(parser)
    return run_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
