"""`python -m omniagent_jax.toy.pipeline [--config configs/toy/pipeline.yaml] [key=value ...]` (`make toy`)."""

from __future__ import annotations

import json
import sys

from omniagent_jax.agent.cli import report_usage_error
from omniagent_jax.toy.pipeline.config import PipelineError, load_pipeline_config
from omniagent_jax.toy.pipeline.stages import main_args, run_pipeline

PROG = "omniagent toy pipeline"


def main(argv: list[str] | None = None) -> int:
    args = main_args(argv)
    try:
        cfg = load_pipeline_config(args.config, args.overrides)
        report = run_pipeline(cfg)
    except PipelineError as e:
        return report_usage_error(PROG, e)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
