#!/usr/bin/env bash
# One Ray node of a batch job, head or worker, run on its own host: directly on the first host,
# through `blaunch HOST` / `srun -w HOST` on the others (clusters/lsf.sh, clusters/slurm.sbatch).
#
#   ray_node.sh HOST CPUS TEMP_DIR [ray start options...]
#
# Why a wrapper: the free ports and the GPU count are facts of the host the node runs on, so
# they are read there; and on TERM/INT/HUP/USR2 (forwarded by the launcher, srun or blaunch)
# it stops exactly this node's Ray: `ray start --block` is started as the leader of its own
# process group, and the raylet, GCS, dashboard and Ray workers all live in that group. Nothing
# else is touched (never the machine-wide `ray stop`, which would end other people's Ray on a
# shared node).
set -euo pipefail

if (($# < 3)); then
    echo "ray_node.sh: arguments: expected HOST CPUS TEMP_DIR [ray start options...]" >&2
    exit 2
fi
host=$1 cpus=$2 temp=$3
shift 3
ray_bin=${RAY_BATCH_RAY:-ray}
py=${RAY_BATCH_PYTHON:-python3}
stop_wait_s=${RAY_BATCH_STOP_WAIT:-30}

# the address this node registers with: the one its host name resolves to
ip=$("$py" -c 'import socket, sys; print(socket.gethostbyname(sys.argv[1]))' "$host")
# a free port for the dashboard agent (Ray's fixed default collides on shared nodes)
agent_port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')

# GPUs actually allocated on this host: RAY_BATCH_GPUS, else the scheduler's CUDA_VISIBLE_DEVICES,
# else SLURM_GPUS_ON_NODE, else none (never let Ray count every GPU of a shared node)
gpus=${RAY_BATCH_GPUS:-}
if [[ -z $gpus ]]; then
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && ${CUDA_VISIBLE_DEVICES} != NoDevFiles ]]; then
        IFS=, read -ra ids <<<"$CUDA_VISIBLE_DEVICES"
        gpus=${#ids[@]}
    else
        gpus=${SLURM_GPUS_ON_NODE:-0}
        gpus=${gpus##*:} # "a100:2" -> 2
    fi
fi

mkdir -p "$temp"
chmod 700 "$temp"
pid=

# shellcheck disable=SC2317  # called by the EXIT trap
stop_node() {
    trap - EXIT
    trap '' TERM INT HUP USR2 # a second signal must not cut the stop short
    if [[ -n $pid ]]; then
        # the node's process group (pgid = pid of `ray start`), or the process itself if it has
        # not made its group yet
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null; do
            if ((waited >= stop_wait_s * 2)); then
                echo "ray_node: $host: Ray still running after ${stop_wait_s} s: SIGKILL"
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.5
            waited=$((waited + 1))
        done
        wait "$pid" 2>/dev/null || true
        echo "ray_node: $host: Ray stopped (process group $pid)"
    fi
    rm -rf -- "$temp"
}
trap stop_node EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP
trap 'exit 140' USR2

# job control for this one start: the node gets its own process group (pgid = its pid)
set -m
"$ray_bin" start --block --disable-usage-stats \
    --node-ip-address="$ip" --num-cpus="$cpus" --num-gpus="$gpus" --temp-dir="$temp" \
    --dashboard-agent-listen-port="$agent_port" "$@" &
pid=$!
set +m
echo "ray_node: $host ($ip): ray start pid $pid, $cpus CPU, $gpus GPU, temp dir $temp"
rc=0
wait "$pid" || rc=$?
echo "ray_node: $host: ray start exited with status $rc"
exit "$rc"
