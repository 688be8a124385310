#!/usr/bin/env bash
# Show a TPU VM's state and the tail of the training log on each worker.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE [options]

Describe the TPU VM (gcloud compute tpus tpu-vm describe), then on each worker report whether
a 'jaxprompt train' process is running and print the last lines of its log (~/jaxprompt_logs/<run>.log).

Required (flag or environment variable):
  --tpu NAME          TPU VM name                                          [TPU_NAME]
  --zone ZONE         zone of the TPU VM                                   [ZONE]
Options:
  --run NAME          which run's log (default: the newest log on each worker)
  --lines N           how many log lines to show (default: 20)
  --worker W          'all' (default) or one worker index
  --follow            stream the log (tail -F) of one worker (default worker 0) instead;
                      skips the describe step. Stop with Ctrl-C; training keeps running.
  --project PROJECT   Google Cloud project (default: gcloud config)         [PROJECT]
  --dry-run           print the gcloud commands instead of running them     [DRY_RUN=1]
  -h, --help          show this help
EOF
}

# Runs on each worker (shipped with `declare -f`).
jp_remote_status() {
  local run=$1 lines=$2 follow=$3
  local host log='' f pids pid cwd
  host=$(hostname)
  if [[ -n $run ]]; then
    log=$HOME/jaxprompt_logs/$run.log
  else
    for f in "$HOME"/jaxprompt_logs/*.log; do
      if [[ -e $f && (-z $log || $f -nt $log) ]]; then log=$f; fi
    done
  fi
  # A venv's console script (/.../bin/jaxprompt train ...), not the shells around it (the bracket keeps the
  # pattern from matching this very command line), and only one started under this home directory (launch.sh
  # runs it in ~/jaxprompt_runs/<run>): another user's or another checkout's training is not this one.
  pids=''
  for pid in $(pgrep -f '/bin/[j]axprompt train' || true); do
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    if [[ $cwd == "$HOME" || $cwd == "$HOME"/* ]]; then pids+="$pid "; fi
  done
  if [[ -n $pids ]]; then
    echo "[$host] training: running (pid ${pids% })"
  else
    echo "[$host] training: not running"
  fi
  if [[ -z $log || ! -f $log ]]; then
    echo "[$host] no log found${log:+ at $log}"
    return 0
  fi
  if [[ $follow == 1 ]]; then
    echo "[$host] following $log"
    exec tail -n "$lines" -F "$log"
  fi
  echo "[$host] last $lines lines of $log:"
  tail -n "$lines" "$log" | sed "s/^/[$host] /"
}

main() {
  local run='' lines=20 worker='' follow=0
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --run) opt_value "$@"; run=$OPTVAL ;;
      --lines) opt_value "$@"; lines=$OPTVAL ;;
      --worker) opt_value "$@"; worker=$OPTVAL ;;
      --follow) follow=1; OPTSHIFT=1 ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  if [[ -n $run ]]; then check_run_name "$run"; fi
  [[ $lines =~ ^[0-9]+$ ]] || die "--lines '$lines' must be a non-negative integer"
  if ((follow)); then
    worker=${worker:-0}
    [[ $worker != all ]] || die "--follow streams one worker's log; pass --worker N (not 'all')"
  fi
  worker=${worker:-all}
  check_worker "$worker"

  scope_args
  if ((!follow)); then
    run gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE_ARGS[@]}"
  fi
  tpu_ssh "$worker" "$(remote_call jp_remote_status "$run" "$lines" "$follow")"
}

main "$@"
