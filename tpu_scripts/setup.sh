#!/usr/bin/env bash
# Install jaxprompt into a virtualenv on every worker of a Cloud TPU VM.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE [options]

On every worker (gcloud compute tpus tpu-vm ssh --worker=all): create a Python virtualenv and
pip-install jaxprompt with its TPU extra. Run it again to upgrade in place.

Required (flag or environment variable):
  --tpu NAME             TPU VM name                                        [TPU_NAME]
  --zone ZONE            zone of the TPU VM                                 [ZONE]
Options:
  --package SPEC         what to install (default: 'jaxprompt[tpu]')        [JAXPROMPT_PACKAGE]
                         - a pip requirement, e.g. 'jaxprompt[tpu]==0.1.0'
                         - a git URL, e.g. git+https://github.com/ORG/jaxprompt.git@main
                           (installed as 'jaxprompt[tpu] @ URL')
                         - a local wheel, e.g. dist/jaxprompt-0.1.0-py3-none-any.whl
                           (copied to every worker with 'gcloud ... scp --worker=all' first)
  --python PY            interpreter for the venv (default: python3.11, as jaxprompt needs
                         Python 3.11; installed with apt-get when missing)
  --venv DIR             venv path on the workers, relative to the home directory
                         (default: jaxprompt_venv)                          [JAXPROMPT_VENV]
  --fresh                delete an existing venv first
  --check-devices        afterwards print the TPU device count seen by JAX on each worker
  --worker W             'all' (default) or one worker index
  --project PROJECT      Google Cloud project (default: gcloud config)       [PROJECT]
  --dry-run              print the gcloud commands instead of running them   [DRY_RUN=1]
  -h, --help             show this help
EOF
}

# Runs on each worker (shipped with `declare -f`): make the venv and pip-install SPEC into it.
jp_remote_setup() {
  local python=$1 venv=$2 spec=$3 wheel=$4 fresh=$5 check_devices=$6
  set -euo pipefail
  local host
  host=$(hostname)
  if [[ $venv != /* ]]; then venv=$HOME/$venv; fi
  # A copied wheel sits in the home directory; name the extra explicitly so jax[tpu] comes along.
  if [[ -n $wheel ]]; then spec="jaxprompt[tpu] @ file://$HOME/$wheel"; fi
  if ! command -v "$python" >/dev/null 2>&1; then
    if [[ $python == */* ]]; then
      echo "[$host] error: $python does not exist" >&2
      return 1
    fi
    echo "[$host] $python not found; installing $python and $python-venv with apt-get"
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$python" "$python-venv"
  fi
  if [[ $fresh == 1 ]]; then rm -rf "$venv"; fi
  if [[ ! -x $venv/bin/python ]]; then "$python" -m venv "$venv"; fi
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install "$spec"
  "$venv/bin/python" -c 'import jaxprompt'
  if [[ ! -x $venv/bin/jaxprompt ]]; then
    echo "[$host] error: $venv/bin/jaxprompt is missing after installing $spec" >&2
    return 1
  fi
  if [[ $check_devices == 1 ]]; then
    "$venv/bin/python" -c 'import jax; print(f"{jax.device_count()} devices ({jax.local_device_count()} local)")' |
      sed "s/^/[$host] /"
  fi
  echo "[$host] ready: $venv/bin/jaxprompt ($spec)"
}

# Classify --package SPEC: sets PIP_SPEC (what the workers pip-install) or, for a local wheel, WHEEL_PATH.
resolve_package() {
  local spec=$1
  PIP_SPEC=
  WHEEL_PATH=
  case $spec in
    *" @ "*) PIP_SPEC=$spec ;;  # already a direct reference
    git+* | http://* | https://*) PIP_SPEC="jaxprompt[tpu] @ $spec" ;;
    *.whl | */* | .*)
      if [[ ! -e $spec ]]; then die "--package '$spec' looks like a local path but does not exist"; fi
      if [[ -d $spec ]]; then
        die "--package '$spec' is a directory; build a wheel first (python -m build --wheel) and pass the .whl"
      fi
      if [[ $spec != *.whl ]]; then die "--package '$spec' is a local file but not a wheel (.whl)"; fi
      WHEEL_PATH=$spec
      ;;
    *) PIP_SPEC=$spec ;;
  esac
}

main() {
  local package=${JAXPROMPT_PACKAGE:-'jaxprompt[tpu]'} python=python3.11 venv=${JAXPROMPT_VENV:-jaxprompt_venv}
  local worker=all fresh=0 check_devices=0
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --package) opt_value "$@"; package=$OPTVAL ;;
      --python) opt_value "$@"; python=$OPTVAL ;;
      --venv) opt_value "$@"; venv=$OPTVAL ;;
      --worker) opt_value "$@"; worker=$OPTVAL ;;
      --fresh) fresh=1; OPTSHIFT=1 ;;
      --check-devices) check_devices=1; OPTSHIFT=1 ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  require "$package" "--package SPEC" JAXPROMPT_PACKAGE
  require "$venv" "--venv DIR" JAXPROMPT_VENV
  check_worker "$worker"
  venv=${venv#\~/}  # the venv is placed relative to the remote home anyway

  local wheel=
  resolve_package "$package"
  if [[ -n $WHEEL_PATH ]]; then
    wheel=$(basename "$WHEEL_PATH")
    [[ $wheel =~ ^[A-Za-z0-9._+-]+$ ]] || die "wheel file name '$wheel' has unexpected characters"
  fi

  scope_args
  if [[ -n $wheel ]]; then
    run gcloud compute tpus tpu-vm scp "$WHEEL_PATH" "$TPU_NAME:$wheel" "${SCOPE_ARGS[@]}" "--worker=$worker"
  fi
  tpu_ssh "$worker" "$(remote_call jp_remote_setup "$python" "$venv" "$PIP_SPEC" "$wheel" "$fresh" "$check_devices")"
}

main "$@"
