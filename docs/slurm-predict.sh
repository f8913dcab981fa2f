#!/bin/bash
# Predict a large mriloop project on a Slurm cluster as a job array: each array task predicts
# one shard of the cases (`mriloop predict --shard I/N`), writing only its own cases' files and
# never the manifest, so the tasks can run at once on shared storage; a dependent job then puts
# every result into the manifest (`mriloop merge-shards`).
#
#   sbatch --array=0-15 docs/slurm-predict.sh /data/cohort /data/cohort/model/best 16
#   # note the job id it prints (JOB), then:
#   sbatch --dependency=afterok:JOB --wrap "mriloop merge-shards /data/cohort"
#
# N (here 16) is the number of shards, given so that a shard that failed can be run again
# alone with the same N (`--array=7 … 16`); merge-shards reports cases without
# a result and refuses malformed records by name. Adjust the resources to your cluster.
#SBATCH --job-name=mriloop-predict
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --gres=gpu:1
set -euo pipefail
PROJECT="$1"
MODEL="$2"
SHARDS="$3"
: "${SLURM_ARRAY_TASK_ID:?run this with sbatch --array}"
mriloop predict "$PROJECT" --model "$MODEL" --backend auto \
  --shard "${SLURM_ARRAY_TASK_ID}/${SHARDS}"
