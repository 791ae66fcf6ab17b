#!/usr/bin/env bash
# Distil on a Cloud TPU VM or pod slice with gcloud: create, install, run, logs, delete.
#
#   launch/tpu_vm.sh --name=sd --zone=us-central2-b --accelerator-type=v4-32 \
#       --workdir=gs://BUCKET/runs/hubert_base up -- --config.total_steps=200000
#
# Actions run in the order given (`up` = create install run logs):
#   create   the TPU VM (with --queued: a queued resource, waiting until it is ACTIVE)
#   install  this checkout (tracked and untracked, .gitignore respected) or a --git clone
#            on every worker, with jax[tpu]
#   run      python -m stackdistill.main --config=... --workdir=... on all workers at once
#            (in the background; each worker logs to ~/stackdistill.log)
#   logs     follow one worker's log (--log-worker, default 0; Ctrl-C stops following)
#   delete   the TPU VM (or the queued resource and its VM)
# Arguments after `--` go to stackdistill.main (e.g. --config.batch_size=256).
# --dry-run prints the commands instead of running them.
# A preempted run resumes from its last checkpoint: `launch/tpu_vm.sh ... delete up` again
# with the same --workdir.
set -euo pipefail

name="stackdistill"
zone="us-central2-b"
project=""
accelerator_type="v4-32"
runtime_version="tpu-ubuntu2204-base"
capacity=""  # "" | spot | preemptible
queued=0
config="configs/hubert_base.py"
workdir=""
mode="distill"
git_url=""
git_ref=""
log_worker=0
dry_run=0
actions=()
main_args=()

usage() {
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  cat <<'EOF'

Options (defaults in brackets):
  --name=NAME                TPU VM / queued resource name [stackdistill]
  --zone=ZONE                [us-central2-b]
  --project=PROJECT          [gcloud's default project]
  --accelerator-type=TYPE    v4-8, v4-32, v5litepod-16, v5p-32, v6e-16, ... [v4-32]
  --runtime-version=VERSION  [tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite,
                             v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e]
  --spot | --preemptible     cheaper capacity that can be taken back (preemption)
  --queued                   create through a queued resource (waits for capacity)
  --config=FILE[:ARG]        experiment config [configs/hubert_base.py]
  --workdir=gs://BUCKET/DIR  run directory shared by all workers (required by run)
  --mode=MODE                stackdistill.main mode [distill]
  --git=URL                  install a clone of URL instead of this checkout
  --git-ref=REF              branch, tag or commit of --git to check out
  --log-worker=N             worker whose log `logs` follows [0]
  --dry-run                  print the gcloud commands, run nothing
EOF
}

# die, quote, quote_all
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Prints a command; runs it unless --dry-run.
run() {
  echo "$(quote_all "$@")"
  if [[ $dry_run == 0 ]]; then "$@"; fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator-type=*) accelerator_type="${1#*=}" ;;
    --runtime-version=*) runtime_version="${1#*=}" ;;
    --spot) capacity="spot" ;;
    --preemptible) capacity="preemptible" ;;
    --queued) queued=1 ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --mode=*) mode="${1#*=}" ;;
    --git=*) git_url="${1#*=}" ;;
    --git-ref=*) git_ref="${1#*=}" ;;
    --log-worker=*) log_worker="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; main_args=("$@"); break ;;
    create | install | run | logs | delete) actions+=("$1") ;;
    up) actions+=(create install run logs) ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done
[[ ${#actions[@]} -gt 0 ]] || { usage; die "no action given"; }
if [[ $queued == 1 && $capacity == "preemptible" ]]; then
  die "queued resources take --spot, not --preemptible"
fi

where=(--zone="$zone")
if [[ -n $project ]]; then where+=(--project="$project"); fi
tpu=(gcloud compute tpus tpu-vm)
queue=(gcloud compute tpus queued-resources)
remote_dir="~/stackdistill"  # expanded by the workers' shell
archive="/tmp/stackdistill-src.tar.gz"

create() {
  if [[ $queued == 1 ]]; then
    run "${queue[@]}" create "$name" --node-id="$name" --accelerator-type="$accelerator_type" \
      --runtime-version="$runtime_version" "${where[@]}" ${capacity:+--$capacity}
    local state_cmd=("${queue[@]}" describe "$name" "${where[@]}" --format='value(state.state)')
    if [[ $dry_run == 1 ]]; then
      echo "$(quote_all "${state_cmd[@]}")  # repeated every 30 s until ACTIVE"
      return
    fi
    local state
    until state="$("${state_cmd[@]}")" && [[ $state == ACTIVE ]]; do
      if [[ $state == FAILED || $state == SUSPENDED ]]; then die "queued resource $name: $state"; fi
      echo "queued resource $name: ${state:-unknown}; waiting" >&2
      sleep 30
    done
  else
    run "${tpu[@]}" create "$name" --accelerator-type="$accelerator_type" \
      --version="$runtime_version" "${where[@]}" ${capacity:+--$capacity}
  fi
}

install() {
  local setup
  if [[ -n $git_url ]]; then
    setup="rm -rf $remote_dir && git clone $(quote "$git_url") $remote_dir"
    if [[ -n $git_ref ]]; then setup+=" && git -C $remote_dir checkout $(quote "$git_ref")"; fi
  else
    local root
    root="$(cd "$(dirname "$0")/.." && pwd)"
    # Tracked and untracked files, without what .gitignore excludes (workdirs, caches).
    echo "(cd $(quote "$root") && git ls-files -co --exclude-standard -z" \
      "| tar czf $archive --null -T -)"
    if [[ $dry_run == 0 ]]; then
      (cd "$root" && git ls-files -co --exclude-standard -z | tar czf "$archive" --null -T -)
    fi
    run "${tpu[@]}" scp "$archive" "$name:$archive" --worker=all "${where[@]}"
    setup="rm -rf $remote_dir && mkdir -p $remote_dir && tar xzf $archive -C $remote_dir"
  fi
  setup+=" && pip install -U \"jax[tpu]\" && pip install -e $remote_dir"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" --command="$setup"
}

start() {
  [[ -n $workdir ]] || die "run needs --workdir (gs://BUCKET/DIR: every worker writes there)"
  [[ $workdir == gs://* ]] || echo "tpu_vm.sh: warning: --workdir=$workdir is not on GCS;" \
    "the workers of a pod do not share local disks" >&2
  local main
  main="$(quote_all python3 -m stackdistill.main --config="$config" --workdir="$workdir" \
    --mode="$mode" "${main_args[@]}")"
  run "${tpu[@]}" ssh "$name" --worker=all "${where[@]}" \
    --command="cd $remote_dir && nohup $main > ~/stackdistill.log 2>&1 < /dev/null &"
}

logs() {
  run "${tpu[@]}" ssh "$name" --worker="$log_worker" "${where[@]}" \
    --command="tail -n 200 -F ~/stackdistill.log"
}

delete() {
  if [[ $queued == 1 ]]; then
    run "${queue[@]}" delete "$name" "${where[@]}" --force --quiet
  else
    run "${tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

for action in "${actions[@]}"; do
  case "$action" in
    create) create ;;
    install) install ;;
    run) start ;;
    logs) logs ;;
    delete) delete ;;
  esac
done
