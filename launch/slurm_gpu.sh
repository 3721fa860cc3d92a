#!/usr/bin/env bash
# Multi-GPU / multi-node SFT under SLURM: one process per node, all of its GPUs local; the
# coordinator is the first node (MASTER_ADDR/MASTER_PORT), jax.distributed reads SLURM_NTASKS /
# SLURM_PROCID (omniagent_jax/train/distributed.py). On a single box without SLURM use --nodes 1.
# --stage rl runs `omniagent train rl` instead (one process: RL needs --nodes 1, its GPUs in one mesh).
# Usage: launch/slurm_gpu.sh [--dry-run] [--stage sft|rl] [--nodes N] [--gpus-per-node G] [--port P] -- ARGS...
set -euo pipefail
DRY=0; NODES=1; GPUS=8; PORT=12355; STAGE=sft
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --gpus-per-node) GPUS="${2:?--gpus-per-node needs a value}"; shift 2 ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --stage) STAGE="${2:?--stage needs a value}"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$STAGE" == sft || "$STAGE" == rl ]] || { echo "--stage must be sft or rl" >&2; exit 2; }
[[ "$STAGE" == sft || "$NODES" -eq 1 ]] || { echo "--stage rl runs as one process: use --nodes 1" >&2; exit 2; }
MASTER="${SLURM_JOB_NODELIST:+\$(scontrol show hostnames \$SLURM_JOB_NODELIST | head -n1)}"
MASTER="${MASTER:-localhost}"
CMD=(srun --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS"
     bash -c "export MASTER_ADDR=$MASTER MASTER_PORT=$PORT; exec .venv/bin/omniagent train $STAGE $*")
if [[ $DRY -eq 1 ]]; then
  echo "plan: $NODES node(s) x $GPUS GPUs = $((NODES * GPUS)) GPUs, one JAX process per node, coordinator $MASTER:$PORT"
  echo "each process: omniagent train $STAGE $*"
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
if [[ "$NODES" -eq 1 && -z "${SLURM_JOB_ID:-}" ]]; then
  exec .venv/bin/omniagent train $STAGE "$@"  # one box: a single process sees every local GPU
fi
exec "${CMD[@]}"
