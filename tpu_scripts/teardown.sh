#!/usr/bin/env bash
# Delete a Cloud TPU VM (and with it every worker's disk: logs, venv, local files).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE [--quiet] [--async]

Delete the TPU VM with 'gcloud compute tpus tpu-vm delete'. Everything stored on the workers
(~/jaxprompt_logs, the venv) is lost; checkpoints in a gs:// model_dir are kept.

Required (flag or environment variable):
  --tpu NAME          TPU VM name                                          [TPU_NAME]
  --zone ZONE         zone of the TPU VM                                   [ZONE]
Options:
  --quiet             do not ask for confirmation
  --async             return without waiting for the deletion to finish
  --project PROJECT   Google Cloud project (default: gcloud config)         [PROJECT]
  --dry-run           print the gcloud command instead of running it        [DRY_RUN=1]
  -h, --help          show this help
EOF
}

main() {
  local quiet=0 async=0
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --quiet | -q) quiet=1; OPTSHIFT=1 ;;
      --async) async=1; OPTSHIFT=1 ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  scope_args
  local -a cmd=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${SCOPE_ARGS[@]}")
  if ((quiet)); then cmd+=(--quiet); fi
  if ((async)); then cmd+=(--async); fi
  run "${cmd[@]}"
}

main "$@"
