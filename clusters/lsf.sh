#!/usr/bin/env bash
# A Ray cluster inside an LSF job, then the search command on it (`ray up` cannot start nodes
# on the lab's LSF cluster). Submit from the repository root, e.g. two hosts with one GPU and
# eight slots each:
#
#   bsub -q gpu_a100 -n 16 -R "span[ptile=8]" -gpu "num=1" -o ray_jobs/%J.out \
#       clusters/lsf.sh python -m latent_tune.search search_spaces/stag.yaml \
#       --storage /shared/ray_results
#
# The head runs on the first host of LSB_MCPU_HOSTS ("host slots host slots ..."), one worker
# per further host through blaunch; each node gets the host's slot count as CPUs and the GPUs in
# its CUDA_VISIBLE_DEVICES. Overrides: RAY_BATCH_CPUS (CPUs per host, e.g. with bsub -x),
# RAY_BATCH_GPUS (GPUs per host). Everything else is shared with clusters/slurm.sbatch
# (clusters/ray_batch.sh); see docs/clusters.md.
set -euo pipefail

here=$(dirname "$0")
[[ -f $here/ray_batch.sh ]] || here=${LS_SUBCWD:-$PWD}/clusters
# shellcheck source=clusters/ray_batch.sh
source "$here/ray_batch.sh"

RB_NAME=clusters/lsf.sh
[[ -n ${LSB_JOBID:-} ]] || rb_fail LSB_JOBID "not set: submit this script with bsub"
[[ -n ${LSB_MCPU_HOSTS:-} ]] || rb_fail LSB_MCPU_HOSTS "not set: submit this script with bsub"
RB_JOBID=$LSB_JOBID
[[ ${LSB_JOBINDEX:-0} == 0 ]] || RB_JOBID="${LSB_JOBID}_$LSB_JOBINDEX"

read -ra pairs <<<"$LSB_MCPU_HOSTS"
((${#pairs[@]} % 2 == 0)) || rb_fail LSB_MCPU_HOSTS "expected 'host slots host slots ...', got '$LSB_MCPU_HOSTS'"
RB_HOSTS=()
RB_CPUS=()
for ((i = 0; i < ${#pairs[@]}; i += 2)); do
    [[ ${pairs[i + 1]} =~ ^[0-9]+$ ]] || rb_fail LSB_MCPU_HOSTS "slot count '${pairs[i + 1]}' of ${pairs[i]} is not a number"
    RB_HOSTS+=("${pairs[i]}")
    RB_CPUS+=("${RAY_BATCH_CPUS:-${pairs[i + 1]}}")
done

rb_remote() { # HOST CPUS COMMAND...: a task of this job on HOST (LSF places it, tracks it)
    local host=$1
    shift 2
    exec blaunch "$host" "$@"
}

rb_run "$@"
