#!/usr/bin/env bash
# Run `moectl train` (python -m moe_core.train) under torchrun on this node's GPUs and keep its exit codes:
# 0 done, 2 bad input, 75 preempted (checkpoint written; run again to resume), 1 other failure.
#
# torchrun turns any worker's non-zero exit into its own 1, and on SIGTERM gives workers a fixed grace
# period before SIGKILL. So SIGTERM is passed to the workers themselves (they checkpoint and exit 75), and
# the code is read back from the status file that rank 0 writes into --output.
set -uo pipefail

NPROC="${NPROC_PER_NODE:-$(python -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
NNODES="${NNODES:-1}"
OUTPUT=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --output|-o) OUTPUT="${args[$((i + 1))]:-}" ;;
    --output=*) OUTPUT="${args[$i]#--output=}" ;;
  esac
done

# A status file left by an earlier launch must not speak for this one.
[[ -n "$OUTPUT" ]] && rm -f "$OUTPUT/exit_status.json"

rdzv=(--standalone)
if [[ "$NNODES" != "1" ]]; then
  # Multi-node (e.g. HyperPod Slurm): MASTER_ADDR/MASTER_PORT and NODE_RANK come from the scheduler.
  rdzv=(--nnodes "$NNODES" --node-rank "${NODE_RANK:?}" --rdzv-backend c10d
        --rdzv-endpoint "${MASTER_ADDR:?}:${MASTER_PORT:-29500}" --rdzv-id "${RDZV_ID:-moe-train}")
fi

torchrun "${rdzv[@]}" --nproc-per-node "$NPROC" -m moe_core.train "$@" &
TORCHRUN_PID=$!
forward_term() { pkill -TERM -P "$TORCHRUN_PID"; }
trap forward_term TERM INT
wait "$TORCHRUN_PID"
rc=$?
# `wait` returns early when a trapped signal arrives: wait again for torchrun to finish.
while kill -0 "$TORCHRUN_PID" 2>/dev/null; do wait "$TORCHRUN_PID"; rc=$?; done

if [[ -n "$OUTPUT" && -f "$OUTPUT/exit_status.json" ]]; then
  exit "$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["exit_code"])' "$OUTPUT/exit_status.json")"
fi
exit "$rc"
