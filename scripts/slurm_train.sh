#!/usr/bin/env bash
# Multi-node training on SLURM with torchrun (DistributedDataParallel): one torchrun per node, c10d rendezvous
# on the first node. Submit with:  sbatch --nodes=2 scripts/slurm_train.sh configs/resnet18-cifar10.yaml
#SBATCH --job-name=cnnctl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [cnnctl train options...]}
shift
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-4}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# data.batch_size in the config is the global batch: it must divide by nodes x GPUs per node.
srun torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv-id "$SLURM_JOB_ID" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD:29500" \
    --max-restarts 3 \
    -m cnnctl train "$CONFIG" "$@"
