# shellcheck shell=bash
# The part of clusters/lsf.sh and clusters/slurm.sbatch that does not depend on the scheduler:
# start a Ray cluster inside a batch allocation, run the search command against it, stop exactly
# the Ray processes started here. Sourced; the scheduler script first fills
#   RB_NAME         its own name (for messages)
#   RB_JOBID        the job id
#   RB_HOSTS[@]     the allocated hosts, the first one being the host this script runs on
#   RB_CPUS[@]      the CPUs allocated on each host
# and defines `rb_remote HOST CPUS COMMAND...` (run COMMAND on HOST inside the allocation; it is
# called in a background subshell and must `exec` the scheduler's launcher, so that the PID
# recorded here is the launcher's, which forwards the stop signal), then calls
# `rb_run SEARCH_COMMAND...`.
#
# Why each choice (see docs/clusters.md): free ports instead of Ray's defaults (several jobs
# share a node); a short per-job, per-node temp dir (Ray's socket paths have a length limit);
# token authentication with a per-job token file, never the user's ~/.ray; the dashboard on
# 127.0.0.1 (reached through an SSH tunnel); Tune storage on a shared file system when there
# are several hosts; and on exit or a scheduler's signal, the search is interrupted (resumable)
# and then every node this job started is stopped through its own process group.

RB_DIR=${RB_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
RB_NODE="$RB_DIR/ray_node.sh"
RB_HEAD_PID=
RB_WORKER_PIDS=()
RB_SEARCH_PID=
RB_TOKEN_GENERATED=
RB_RC=

rb_log() { printf 'ray_batch: %s\n' "$*"; }

# bad input: one line `<file>: <key>: <problem>`, exit 2, nothing started
rb_fail() {
    printf '%s: %s: %s\n' "$RB_NAME" "$1" "$2" >&2
    exit 2
}

rb_free_port() {
    "${RAY_BATCH_PYTHON:-python3}" -c \
        'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

rb_resolve() {
    "${RAY_BATCH_PYTHON:-python3}" -c \
        'import socket, sys; print(socket.gethostbyname(sys.argv[1]))' "$1"
}

# several hosts need Tune storage every host sees: --storage in the command, or `storage:` in a
# space file named by the command
rb_check_storage() {
    ((${#RB_HOSTS[@]} > 1)) || return 0
    local a
    for a in "$@"; do
        case $a in
        --storage | --storage=?*) return 0 ;;
        esac
        if [[ $a == *.yaml || $a == *.yml ]] && [[ -f $a ]] && grep -Eq '^storage:[[:space:]]*[^[:space:]#]' "$a"; then
            return 0
        fi
    done
    rb_fail "--storage" "${#RB_HOSTS[@]} hosts need Tune storage on a shared file system: add --storage /shared/path to the search command"
}

# the token: RAY_AUTH_TOKEN_PATH when given, else a new one in the job dir (removed at the end)
rb_token() {
    if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        RAY_AUTH_TOKEN_PATH=$(cd "$(dirname "$RAY_AUTH_TOKEN_PATH")" && pwd)/$(basename "$RAY_AUTH_TOKEN_PATH")
    else
        RAY_AUTH_TOKEN_PATH="$RB_JOB_DIR/auth_token"
        (
            umask 077
            if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then
                printf '%s' "$RAY_AUTH_TOKEN" >"$RAY_AUTH_TOKEN_PATH"
            else
                od -An -vtx1 -N32 /dev/urandom | tr -d ' \n' >"$RAY_AUTH_TOKEN_PATH"
            fi
        )
        RB_TOKEN_GENERATED=1
    fi
    # Ray reads RAY_AUTH_TOKEN before the file: one source only, the file
    unset RAY_AUTH_TOKEN
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH
}

# wait until PID ends, at most $2 seconds; 0 if it ended
rb_wait_pid() {
    local pid=$1 n=$(($2 * 2))
    while kill -0 "$pid" 2>/dev/null; do
        ((n-- > 0)) || return 1
        sleep 0.5
    done
    wait "$pid" 2>/dev/null || true
    return 0
}

rb_stop() { # PID (a node wrapper, blaunch or srun): TERM, then KILL after the grace period
    # (longer than the node wrapper's own, so that it escalates first)
    local pid=$1
    kill -0 "$pid" 2>/dev/null || {
        wait "$pid" 2>/dev/null || true
        return 0
    }
    kill -TERM "$pid" 2>/dev/null || true
    rb_wait_pid "$pid" $((${RAY_BATCH_STOP_WAIT:-30} + 15)) || {
        rb_log "process $pid did not stop in time: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    }
}

rb_cleanup() {
    local rc=${RB_RC:-$?}
    # the scheduler's next signals (bkill: SIGINT, SIGTERM, then SIGKILL) must not cut the stop
    trap - EXIT
    trap '' TERM INT HUP USR2
    if [[ -n $RB_SEARCH_PID ]] && kill -0 "$RB_SEARCH_PID" 2>/dev/null; then
        # Ctrl+C of the search: Tune saves the experiment, the search prints how to resume
        rb_log "interrupting the search (pid $RB_SEARCH_PID)"
        kill -INT -- "-$RB_SEARCH_PID" 2>/dev/null || kill -INT "$RB_SEARCH_PID" 2>/dev/null || true
        if ! rb_wait_pid "$RB_SEARCH_PID" "${RAY_BATCH_SEARCH_GRACE:-60}"; then
            kill -TERM -- "-$RB_SEARCH_PID" 2>/dev/null || kill -TERM "$RB_SEARCH_PID" 2>/dev/null || true
            rb_wait_pid "$RB_SEARCH_PID" 10 || kill -KILL -- "-$RB_SEARCH_PID" 2>/dev/null || true
        fi
    fi
    local i
    for ((i = ${#RB_WORKER_PIDS[@]} - 1; i >= 0; i--)); do
        rb_stop "${RB_WORKER_PIDS[i]}"
    done
    [[ -z $RB_HEAD_PID ]] || rb_stop "$RB_HEAD_PID"
    if [[ -n $RB_TOKEN_GENERATED ]]; then
        rm -f -- "$RAY_AUTH_TOKEN_PATH"
    fi
    rb_log "stopped the Ray nodes of job $RB_JOBID (logs in $RB_JOB_DIR); exit status $rc"
    exit "$rc"
}

rb_signal() { # SIGNAL_NAME STATUS
    rb_log "received SIG$1: stopping"
    RB_RC=$2
    exit "$2"
}

rb_alive_nodes() {
    timeout 60 "${RAY_BATCH_RAY:-ray}" status --address="$RAY_ADDRESS" 2>/dev/null |
        sed '/^Pending:/,$d' | grep -c 'node_' || true
}

# a head that stopped (e.g. Ray's own startup timeout on an overloaded host) ends the job
rb_head_alive() {
    kill -0 "$RB_HEAD_PID" 2>/dev/null && return 0
    rb_log "the Ray head stopped during startup (see $RB_JOB_DIR/head.log)"
    RB_RC=1
    exit 1
}

rb_run() {
    (($# > 0)) || rb_fail command "missing: give the search command, e.g. python -m latent_tune.search search_spaces/stag.yaml --storage /shared/ray_results"
    ((${#RB_HOSTS[@]} > 0)) || rb_fail hosts "the allocation names no host"
    rb_check_storage "$@"
    if [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]]; then
        [[ -s $RAY_AUTH_TOKEN_PATH && -r $RAY_AUTH_TOKEN_PATH ]] ||
            rb_fail RAY_AUTH_TOKEN_PATH "$RAY_AUTH_TOKEN_PATH: no such file, unreadable or empty"
    fi
    # the loopback-only switch of a one-machine Ray makes a multi-node Ray refuse to start
    unset RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER RAY_ADDRESS
    export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}

    RB_JOB_DIR=${RAY_BATCH_JOB_DIR:-$PWD/ray_jobs/$RB_JOBID}
    mkdir -p "$RB_JOB_DIR"
    chmod 700 "$RB_JOB_DIR"
    RB_JOB_DIR=$(cd "$RB_JOB_DIR" && pwd)
    rb_token
    trap rb_cleanup EXIT
    trap 'rb_signal TERM 143' TERM
    trap 'rb_signal INT 130' INT
    trap 'rb_signal HUP 129' HUP
    trap 'rb_signal USR2 140' USR2

    # node-local temp dirs: short (Ray's socket paths are limited to about 100 characters)
    local tmp_base=${TMPDIR:-/tmp}
    ((${#tmp_base} <= 40)) || tmp_base=/tmp
    local head=${RB_HOSTS[0]} head_ip port dash_port client_port
    head_ip=$(rb_resolve "$head")
    port=$(rb_free_port)
    dash_port=$(rb_free_port)
    client_port=$(rb_free_port)
    # for the search command: the cluster to join, and the dashboard (on the head, loopback)
    export RAY_ADDRESS="$head_ip:$port" RAY_BATCH_DASHBOARD_URL="http://127.0.0.1:$dash_port"

    rb_log "job $RB_JOBID: ${#RB_HOSTS[@]} host(s): ${RB_HOSTS[*]}; job dir $RB_JOB_DIR"
    "$RB_NODE" "$head" "${RB_CPUS[0]}" "$tmp_base/rb$RB_JOBID-h" \
        --head --port="$port" --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" \
        --ray-client-server-port="$client_port" >"$RB_JOB_DIR/head.log" 2>&1 &
    RB_HEAD_PID=$!
    rb_log "head on $head ($RAY_ADDRESS): node pid $RB_HEAD_PID, ${RB_CPUS[0]} CPU, log $RB_JOB_DIR/head.log"

    local timeout=${RAY_BATCH_START_TIMEOUT:-180} t0=$SECONDS
    until (: <"/dev/tcp/$head_ip/$port") 2>/dev/null; do
        rb_head_alive
        ((SECONDS - t0 < timeout)) || {
            rb_log "the head did not listen within $timeout s (see $RB_JOB_DIR/head.log)"
            RB_RC=1
            exit 1
        }
        sleep 1
    done

    local i host
    for ((i = 1; i < ${#RB_HOSTS[@]}; i++)); do
        host=${RB_HOSTS[i]}
        rb_remote "$host" "${RB_CPUS[i]}" "$RB_NODE" "$host" "${RB_CPUS[i]}" \
            "$tmp_base/rb$RB_JOBID-w$i" --address="$RAY_ADDRESS" \
            >"$RB_JOB_DIR/worker-$i-$host.log" 2>&1 &
        RB_WORKER_PIDS+=("$!")
        rb_log "worker on $host: launcher pid $!, ${RB_CPUS[i]} CPU, log $RB_JOB_DIR/worker-$i-$host.log"
    done

    local want=${#RB_HOSTS[@]} alive=0
    while :; do
        rb_head_alive
        alive=$(rb_alive_nodes)
        ((alive < want && SECONDS - t0 < timeout)) || break
        sleep 2
    done
    if ((alive < want)); then
        rb_log "WARNING: only $alive of $want nodes joined within $timeout s (see the logs in $RB_JOB_DIR); the search runs on those"
    else
        rb_log "$alive of $want nodes joined"
    fi
    rb_log "dashboard: http://127.0.0.1:$dash_port on $head (loopback only). From your machine:"
    rb_log "  ssh -L 8265:127.0.0.1:$dash_port ${USER:-you}@$head   then open http://127.0.0.1:8265"
    rb_log "  token the dashboard asks for: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH ray get-auth-token"
    if [[ -n $RB_TOKEN_GENERATED ]]; then
        rb_log "  (token file generated for this job, removed when it ends; never share the token)"
    else
        rb_log "  (token file from RAY_AUTH_TOKEN_PATH; never share the token)"
    fi
    rb_head_alive
    rb_log "running: $*"

    # own process group (job control on for this one start): the signal handler interrupts the
    # search and whatever it started, like Ctrl+C would
    set -m
    "$@" &
    RB_SEARCH_PID=$!
    set +m
    local rc=0
    wait "$RB_SEARCH_PID" || rc=$?
    RB_SEARCH_PID=
    rb_log "search command exited with status $rc"
    RB_RC=$rc
    exit "$rc"
}
