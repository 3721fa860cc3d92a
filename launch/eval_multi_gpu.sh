#!/usr/bin/env bash
# One `omniagent eval` process per GPU on one box: process K sees only GPU_IDS[K] (CUDA_VISIBLE_DEVICES) and
# plays shard K of N into the shared output directory (results.shard-K.jsonl); the last shard to finish
# writes the combined results.jsonl and summaries (docs/protocol.md §11). Rerun the same command to resume.
# For several hosts give each its own --shard-offset and run `omniagent eval merge` on their directories.
# Usage: GPU_IDS=0,1,2,3 launch/eval_multi_gpu.sh [--dry-run] [--log-dir DIR] [--shard-offset K --total-shards N]
#            -- --dataset X.jsonl --model PATH --output-dir D [eval flags...]
set -euo pipefail
DRY=0; LOG_DIR=""; OFFSET=0; TOTAL=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --log-dir) LOG_DIR="${2:?--log-dir needs a value}"; shift 2 ;;
    --shard-offset) OFFSET="${2:?--shard-offset needs a value}"; shift 2 ;;
    --total-shards) TOTAL="${2:?--total-shards needs a value}"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (eval flags go after --)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a GPUS <<< "${GPU_IDS:-0}"
if [[ ${#GPUS[@]} -eq 0 ]]; then echo "GPU_IDS is empty" >&2; exit 2; fi
TOTAL="${TOTAL:-${#GPUS[@]}}"
if (( OFFSET + ${#GPUS[@]} > TOTAL )); then
  echo "--shard-offset $OFFSET + ${#GPUS[@]} GPUs exceeds --total-shards $TOTAL" >&2; exit 2
fi
OMNIAGENT="${OMNIAGENT:-.venv/bin/omniagent}"
echo "plan: ${#GPUS[@]} process(es) on GPUs ${GPU_IDS:-0}, shards $OFFSET..$((OFFSET + ${#GPUS[@]} - 1)) of $TOTAL"
PIDS=()
for i in "${!GPUS[@]}"; do
  K=$((OFFSET + i))
  CMD=(env CUDA_VISIBLE_DEVICES="${GPUS[$i]}" "$OMNIAGENT" eval "$@" --num-shards "$TOTAL" --shard-index "$K")
  if [[ $DRY -eq 1 ]]; then
    printf '%q ' "${CMD[@]}"; echo
    continue
  fi
  if [[ -n "$LOG_DIR" ]]; then
    mkdir -p "$LOG_DIR"
    "${CMD[@]}" --no-progress > "$LOG_DIR/shard-$K.log" 2>&1 &
  else
    "${CMD[@]}" &
  fi
  PIDS+=($!)
done
[[ $DRY -eq 1 ]] && exit 0
STATUS=0
for pid in "${PIDS[@]}"; do wait "$pid" || STATUS=1; done
exit $STATUS
