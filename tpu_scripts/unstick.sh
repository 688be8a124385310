#!/usr/bin/env bash
# Free a TPU left busy by a crashed or interrupted run.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE [--worker W]

When one worker of a slice dies, the others keep their TPU chips open and the next launch fails
("TPU in use" / libtpu lock errors). On every worker this kills (sudo kill -9) each process that
holds a TPU device (/dev/accel*, /dev/vfio/*), whoever owns it, and removes /tmp/libtpu_lockfile.

Required (flag or environment variable):
  --tpu NAME          TPU VM name                                          [TPU_NAME]
  --zone ZONE         zone of the TPU VM                                   [ZONE]
Options:
  --worker W          'all' (default) or one worker index
  --devices 'GLOB...' device files to free, as globs expanded on the workers
                      (default: '/dev/accel* /dev/vfio/*': v2-v4 use accel, v5e/v5p/v6e VFIO)
  --project PROJECT   Google Cloud project (default: gcloud config)         [PROJECT]
  --dry-run           print the gcloud command instead of running it        [DRY_RUN=1]
  -h, --help          show this help
EOF
}

# Runs on each worker (shipped with `declare -f`).
jp_remote_unstick() {
  local globs=$1
  set -uo pipefail
  local host pids=''
  local -a devices
  host=$(hostname)
  # Unquoted on purpose: the globs expand here, on the worker; patterns matching nothing vanish.
  shopt -s nullglob
  # shellcheck disable=SC2206
  devices=($globs)
  shopt -u nullglob
  if ((${#devices[@]})); then
    pids=$(sudo lsof -t "${devices[@]}" 2>/dev/null | sort -u)
  fi
  if [[ -n $pids ]]; then
    echo "[$host] killing processes holding the TPU:"
    # shellcheck disable=SC2086  # one pid per line, split on purpose
    ps -o pid=,user=,args= -p $pids | sed "s/^/[$host]   /"
    printf '%s\n' "$pids" | xargs -r sudo kill -9
    sleep 1
  else
    echo "[$host] no process holds a TPU device"
  fi
  sudo rm -f /tmp/libtpu_lockfile
  echo "[$host] removed /tmp/libtpu_lockfile (if present)"
}

main() {
  local worker=all device_globs='/dev/accel* /dev/vfio/*'
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --worker) opt_value "$@"; worker=$OPTVAL ;;
      --devices) opt_value "$@"; device_globs=$OPTVAL ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  check_worker "$worker"
  require "$device_globs" "--devices 'GLOB...'"
  scope_args
  tpu_ssh "$worker" "$(remote_call jp_remote_unstick "$device_globs")"
}

main "$@"
