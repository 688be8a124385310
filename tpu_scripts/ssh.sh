#!/usr/bin/env bash
# Open a shell (or run one command) on one worker of a Cloud TPU VM.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE [--worker N] [--command CMD] [-- ssh flags]

SSH into one worker of a TPU VM with 'gcloud compute tpus tpu-vm ssh'.

Required (flag or environment variable):
  --tpu NAME          TPU VM name                                          [TPU_NAME]
  --zone ZONE         zone of the TPU VM                                   [ZONE]
Options:
  --worker W          worker index (default: 0), or 'all' together with --command
  --command CMD       run CMD (shell text, run by the worker's bash) instead of a login shell
  --project PROJECT   Google Cloud project (default: gcloud config)         [PROJECT]
  --dry-run           print the gcloud command instead of running it        [DRY_RUN=1]
  -h, --help          show this help

Words after '--' go to ssh itself (e.g. -- -L 6006:localhost:6006).
EOF
}

main() {
  local worker=0 command='' has_command=0
  local -a ssh_args=()
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --worker) opt_value "$@"; worker=$OPTVAL ;;
      --command) opt_value "$@"; command=$OPTVAL; has_command=1 ;;
      --) shift; ssh_args=("$@"); break ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  check_worker "$worker"
  if [[ $worker == all ]] && ((!has_command)); then
    die "--worker all needs --command (an interactive shell is opened on one worker)"
  fi

  scope_args
  local -a cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SCOPE_ARGS[@]}" "--worker=$worker")
  if ((has_command)); then cmd+=("--command=$command"); fi
  if ((${#ssh_args[@]})); then cmd+=(-- "${ssh_args[@]}"); fi
  run "${cmd[@]}"
}

main "$@"
