#!/usr/bin/env bash
# Multi-GPU / multi-node mlr-bench with torchrun (one process per GPU, DDP).
#
# Single node, all its GPUs:
#   benchmarks/cluster/torchrun.sh --method comc --data coco2014 --data.root /shared/coco
# Two nodes with 8 GPUs each (run on every node; only NODE_RANK differs):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node01 GPUS_PER_NODE=8 benchmarks/cluster/torchrun.sh ...
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node01 GPUS_PER_NODE=8 benchmarks/cluster/torchrun.sh ...
# Try it on a laptop (2 CPU processes, gloo):
#   ACCELERATOR=cpu GPUS_PER_NODE=2 MLR_COMMAND=train benchmarks/cluster/torchrun.sh \
#       --method comc --data world --trainer.max_epochs 1
#
# On a single node torchrun is optional: `mlr-bench fit --trainer.devices N --trainer.strategy
# ddp` starts the N processes itself. torchrun (or SLURM, see slurm.sbatch) is what spans nodes.
#
# Results are exact under DDP: the evaluator gathers every rank's scores and drops the samples
# DistributedSampler duplicates, so test metrics equal a 1-process run on the same checkpoint.
# Training is not bit-identical to 1 process: the global batch is batch_size x world size
# (scale --data.batch_size or the learning rate yourself if you want the 1-GPU recipe).
set -euo pipefail

NNODES="${NNODES:-1}"                      # must equal --trainer.num_nodes (set below)
NODE_RANK="${NODE_RANK:-0}"                # 0 .. NNODES-1, one value per node
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"    # host of node rank 0, reachable from every node
MASTER_PORT="${MASTER_PORT:-29500}"
ACCELERATOR="${ACCELERATOR:-gpu}"
MLR_COMMAND="${MLR_COMMAND:-fit}"          # fit | train (fit then test) | test | validate
if [[ -z "${GPUS_PER_NODE:-}" ]]; then     # must equal --trainer.devices (set below)
    GPUS_PER_NODE="$(nvidia-smi --list-gpus 2>/dev/null | wc -l)"
    [[ "$GPUS_PER_NODE" -gt 0 ]] || { echo "no GPU found; set GPUS_PER_NODE" >&2; exit 2; }
fi

# Feature caches (frozen CLIP outputs) and corpus caches: on storage every node sees, so they are
# built once. Rank 0 of each node builds missing caches in prepare_data under a file lock and
# with an atomic rename; the other ranks wait and then memory-map them.
export MLR_BENCH_CACHE="${MLR_BENCH_CACHE:-$HOME/.cache/mlr-bench}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"   # per process; avoid oversubscribing the CPUs

# --no-python: run the `mlr-bench` console script itself (Lightning detects torchrun's env:
# RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT, and does not launch processes of its own).
exec torchrun \
    --nnodes "$NNODES" \
    --node-rank "$NODE_RANK" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" \
    --no-python \
    mlr-bench "$MLR_COMMAND" \
    --trainer.accelerator "$ACCELERATOR" \
    --trainer.strategy ddp \
    --trainer.devices "$GPUS_PER_NODE" \
    --trainer.num_nodes "$NNODES" \
    "$@"
