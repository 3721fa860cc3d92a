#!/usr/bin/env bash
# Run `omniagent train sft ARGS...` (or `train rl`) on every worker of a TPU pod slice (the same command on each;
# jax.distributed discovers the slice from the TPU metadata).
# --stage rl runs `omniagent train rl` (on a single-host slice: RL runs as one process).
# Usage: launch/tpu_pod.sh [--dry-run] [--stage sft|rl] --tpu NAME --zone ZONE [--project P] [--repo DIR] -- ARGS...
set -euo pipefail
DRY=0; TPU=""; ZONE=""; PROJECT=""; REPO_DIR="~/omniagent-jax"; STAGE=sft
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --tpu) TPU="${2:?--tpu needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --repo) REPO_DIR="${2:?--repo needs a value}"; shift 2 ;;
    --stage) STAGE="${2:?--stage needs a value}"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$STAGE" == sft || "$STAGE" == rl ]] || { echo "--stage must be sft or rl" >&2; exit 2; }
[[ -n "$TPU" && -n "$ZONE" ]] || { echo "--tpu and --zone are required" >&2; exit 2; }
REMOTE="cd $REPO_DIR && .venv/bin/omniagent train $STAGE $*"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all ${PROJECT:+--project="$PROJECT"} --command="$REMOTE")
if [[ $DRY -eq 1 ]]; then
  echo "plan: TPU pod slice $TPU ($ZONE), every worker runs the same command; jax.distributed reads the slice topology"
  echo "remote: omniagent train $STAGE $*"
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
