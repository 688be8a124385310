# shellcheck shell=bash disable=SC2034  # globals set here are read by the scripts that source this file
# Shared helpers for the Cloud TPU VM scripts. Sourced, never executed.
#
# Every script: parses `--flag value` / `--flag=value` arguments with `opt_value` and `common_flag`, checks
# required values with `require`, and runs each gcloud command through `run`, which prints the command
# (shell-quoted, copy-pasteable) instead of running it when DRY_RUN=1 (`--dry-run`).

set -euo pipefail

SCRIPT_NAME=$(basename "$0")

# Settings shared by all scripts; each may be preset in the environment.
TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
PROJECT=${PROJECT:-}
DRY_RUN=${DRY_RUN:-0}

# Set by `opt_value`: the option's value and how many words it took (1 for --flag=value, 2 for --flag value).
OPTVAL=
OPTSHIFT=1

die() {
  printf '%s: error: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit 2
}

# Print the words of a command, each shell-quoted, on one line.
quote_cmd() {
  local quoted
  quoted=$(printf '%q ' "$@")
  printf '%s\n' "${quoted% }"
}

# Run a command, or only print it (to stdout) under --dry-run. Real runs echo it to stderr first, with
# long words (the scripts shipped to the workers) shortened; --dry-run shows them in full.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_cmd "$@"
    return 0
  fi
  local -a shown=()
  local word
  for word in "$@"; do
    if ((${#word} > 120)); then word="${word:0:40}...<${#word} characters, see --dry-run>"; fi
    shown+=("$word")
  done
  printf '+ %s\n' "$(quote_cmd "${shown[@]}")" >&2
  "$@"
}

# Flag name without its `=value`, with `_` spelled `-`, so `--gin_dir` and `--gin-dir=x` both match `--gin-dir`.
flag_key() {
  local key=${1%%=*}
  printf '%s' "${key//_/-}"
}

# opt_value "$@": read the value of the option in $1 into OPTVAL (and OPTSHIFT).
opt_value() {
  local flag=$1
  if [[ $flag == *=* ]]; then
    OPTVAL=${flag#*=}
    OPTSHIFT=1
    return 0
  fi
  if (($# < 2)) || [[ $2 == --* ]]; then
    die "$flag needs a value (see --help)"
  fi
  OPTVAL=$2
  OPTSHIFT=2
}

# common_flag "$@": consume one flag every script shares. Returns 1 if $1 is not one of them.
# Usage in a parse loop:  if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
common_flag() {
  OPTSHIFT=1
  case $(flag_key "$1") in
    --tpu | --name) opt_value "$@"; TPU_NAME=$OPTVAL ;;
    --zone) opt_value "$@"; ZONE=$OPTVAL ;;
    --project) opt_value "$@"; PROJECT=$OPTVAL ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

unknown_flag() {
  die "unknown flag '$1' (see --help)"
}

# require VALUE FLAG [ENV_VAR]: fail with a message naming the flag (and env var) when VALUE is empty.
require() {
  local value=$1 flag=$2 env_var=${3:-}
  if [[ -z $value ]]; then
    if [[ -n $env_var ]]; then
      die "missing $flag (or set $env_var)"
    fi
    die "missing $flag"
  fi
}

# The TPU VM name must be a valid GCE resource name; checking here gives a clear message before gcloud runs.
check_tpu_name() {
  require "$TPU_NAME" "--tpu NAME" TPU_NAME
  if [[ ! $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    die "--tpu '$TPU_NAME' is not a valid TPU name (lowercase letters, digits and '-', starting with a letter)"
  fi
}

require_tpu_and_zone() {
  check_tpu_name
  require "$ZONE" "--zone ZONE" ZONE
}

# Flags locating the TPU, for every gcloud tpu-vm command: --zone, and --project when given.
scope_args() {
  SCOPE_ARGS=("--zone=$ZONE")
  if [[ -n $PROJECT ]]; then
    SCOPE_ARGS+=("--project=$PROJECT")
  fi
}

# Worker selector for ssh/scp: "all" or a 0-based worker index.
check_worker() {
  local worker=$1
  if [[ $worker != all && ! $worker =~ ^[0-9]+$ ]]; then
    die "--worker '$worker' must be 'all' or a worker index (0, 1, ...)"
  fi
}

# Run names become file names on the workers (~/jaxprompt_logs/<run>.log), so keep them plain.
check_run_name() {
  local run=$1
  if [[ ! $run =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    die "--run '$run' may only contain letters, digits, '.', '_' and '-' (and must not start with '.' or '-')"
  fi
}

# `gcloud compute tpus tpu-vm ssh` on the selected worker(s), running the shell text REMOTE_CMD there.
tpu_ssh() {
  local worker=$1 remote_cmd=$2
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${SCOPE_ARGS[@]}" "--worker=$worker" \
    "--command=$remote_cmd"
}

# Text that defines the shell functions named in FNS (space-separated) and then calls the first one with
# ARGS, each %q-quoted: how these scripts ship code to a worker's bash without hand-escaping it.
# Usage: remote_call "main_fn helper_fn" ARGS...
remote_call() {
  local fns=$1
  shift
  local -a names
  read -r -a names <<<"$fns"
  printf '%s\n%s' "$(declare -f "${names[@]}")" "$(quote_cmd "${names[0]}" "$@")"
}
