#!/usr/bin/env bash
# Distil on several GPU hosts: one process per host, each driving all of its GPUs.
#
#   # in a SLURM allocation (salloc/sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8):
#   launch/gpu_multihost.sh --slurm --workdir=/shared/runs/hubert_base
#   # over ssh, hosts one per line in a file (the first one coordinates):
#   launch/gpu_multihost.sh --hosts=hosts.txt --workdir=gs://BUCKET/runs/hubert_base
#   # one host with several GPUs needs none of this:
#   python -m stackdistill.main --config=configs/hubert_base.py --workdir=/runs/hubert_base
#
# Every process gets JAX_COORDINATOR_ADDRESS (first host:port), JAX_NUM_PROCESSES,
# JAX_PROCESS_ID and JAX_LOCAL_DEVICE_IDS (all GPUs of its host), which
# stackdistill.main hands to jax.distributed.initialize. The workdir must be shared by all
# hosts (a network file system or gs://). Arguments after `--` go to stackdistill.main.
# --dry-run prints the commands instead of running them.
set -euo pipefail

launcher="local"  # local | slurm | ssh
hosts_file=""
coordinator=""
nodes=""
port=12355
config="configs/hubert_base.py"
workdir=""
mode="distill"
python="python"
remote_dir="$(cd "$(dirname "$0")/.." && pwd)"
dry_run=0
main_args=()

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options (defaults in brackets):
  --slurm                one task per allocated node with srun
  --hosts=FILE           one host per line (# comments); processes started with ssh
  --coordinator=HOST     address the other hosts reach process 0 at [the first host]
  --nodes=N              --slurm outside an allocation's environment [SLURM_JOB_NUM_NODES]
  --port=PORT            coordinator port [12355]
  --config=FILE[:ARG]    experiment config [configs/hubert_base.py]
  --workdir=DIR          run directory shared by all hosts (required)
  --mode=MODE            stackdistill.main mode [distill]
  --python=PYTHON        interpreter on the hosts [python]
  --remote-dir=DIR       the project checkout on every host [this checkout's path]
  --dry-run              print the commands, run nothing
EOF
}

# die, quote, quote_all
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --slurm) launcher="slurm" ;;
    --hosts=*) launcher="ssh"; hosts_file="${1#*=}" ;;
    --coordinator=*) coordinator="${1#*=}" ;;
    --nodes=*) nodes="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --python=*) python="${1#*=}" ;;
    --remote-dir=*) remote_dir="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_args=("$@"); break ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ -n $workdir ]] || die "--workdir is required (a directory every host can write)"

main_cmd="$(quote_all "$python" -m stackdistill.main --config="$config" --workdir="$workdir" \
  --mode="$mode" "${main_args[@]}")"
# Evaluated on each host: all of its GPUs belong to its one process (under SLURM, JAX
# would otherwise give each process only the GPU of its local task id).
gpus='$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)'

case "$launcher" in
  local)
    echo "$main_cmd"
    if [[ $dry_run == 0 ]]; then eval "$main_cmd"; fi
    ;;

  slurm)
    nodes="${nodes:-${SLURM_JOB_NUM_NODES:-}}"
    if [[ -z $coordinator && -n ${SLURM_JOB_NODELIST:-} ]]; then
      coordinator="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | awk 'NR == 1')"  # reads all: no SIGPIPE
    fi
    [[ -n $nodes && -n $coordinator ]] ||
      die "--slurm: run inside an allocation (salloc/sbatch) or pass --nodes and --coordinator"
    # Single quotes: SLURM_PROCID and the GPU list are read by each task, not here.
    task="export JAX_COORDINATOR_ADDRESS=$coordinator:$port JAX_NUM_PROCESSES=$nodes"
    task+=" JAX_PROCESS_ID=\$SLURM_PROCID JAX_LOCAL_DEVICE_IDS=$gpus"
    task+=" && cd $(quote "$remote_dir") && exec $main_cmd"
    cmd=(srun --nodes="$nodes" --ntasks="$nodes" --ntasks-per-node=1 --kill-on-bad-exit=1
      bash -c "$task")
    echo "$(quote_all "${cmd[@]}")"
    if [[ $dry_run == 0 ]]; then "${cmd[@]}"; fi
    ;;

  ssh)
    [[ -f $hosts_file ]] || die "--hosts=$hosts_file: no such file"
    hosts=()
    while read -r line; do
      line="${line%%#*}"
      line="${line//[[:space:]]/}"
      if [[ -n $line ]]; then hosts+=("$line"); fi
    done <"$hosts_file"
    [[ ${#hosts[@]} -gt 0 ]] || die "--hosts=$hosts_file lists no host"
    coordinator="${coordinator:-${hosts[0]}}"
    pids=()
    if [[ $dry_run == 0 ]]; then trap 'kill "${pids[@]}" 2>/dev/null' INT TERM; fi
    for i in "${!hosts[@]}"; do
      host="${hosts[$i]}"
      remote="cd $(quote "$remote_dir") && JAX_COORDINATOR_ADDRESS=$coordinator:$port"
      remote+=" JAX_NUM_PROCESSES=${#hosts[@]} JAX_PROCESS_ID=$i JAX_LOCAL_DEVICE_IDS=$gpus"
      remote+=" $main_cmd"
      cmd=(ssh -o BatchMode=yes "$host" "$remote")
      echo "$(quote_all "${cmd[@]}")"
      if [[ $dry_run == 0 ]]; then
        ("${cmd[@]}" 2>&1 | sed -u "s/^/[$host] /") &
        pids+=($!)
      fi
    done
    failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    exit "$failed"
    ;;
esac
