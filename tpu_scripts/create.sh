#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice) for jaxprompt.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE --accelerator-type TYPE [options] [-- extra gcloud flags]

Create a Cloud TPU VM with 'gcloud compute tpus tpu-vm create'.

Required (flag or environment variable):
  --tpu NAME                 TPU VM name                                   [TPU_NAME]
  --zone ZONE                e.g. europe-west4-a, us-central2-b            [ZONE]
  --accelerator-type TYPE    v2-8, v3-8, v3-32, v4-8, v4-32, v5litepod-8, v5p-8, v6e-8, ...
                                                                           [ACCELERATOR_TYPE]
Options:
  --version VERSION          TPU software (runtime) version                [RUNTIME_VERSION]
                             default by family: v2/v3/v4 -> tpu-ubuntu2204-base,
                             v5litepod (v5e) -> v2-alpha-tpuv5-lite, v5p -> v2-alpha-tpuv5,
                             v6e -> v2-alpha-tpuv6e
  --project PROJECT          Google Cloud project (default: gcloud config)  [PROJECT]
  --spot                     create a Spot TPU (cheaper, can be reclaimed at any time)
  --preemptible              create a preemptible TPU (legacy form of --spot)
  --dry-run                  print the gcloud command instead of running it [DRY_RUN=1]
  -h, --help                 show this help

Words after '--' are passed to gcloud unchanged (e.g. -- --network=my-net --labels=team=nlp).

Example:
  $SCRIPT_NAME --tpu pt-xxl --zone europe-west4-a --accelerator-type v3-32 --spot
EOF
}

# Default runtime version for an accelerator type, or nothing for an unknown family.
default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

main() {
  local accelerator=${ACCELERATOR_TYPE:-} version=${RUNTIME_VERSION:-} spot=0 preemptible=0
  local -a extra=()
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $(flag_key "$1") in
      --accelerator-type) opt_value "$@"; accelerator=$OPTVAL ;;
      --version | --runtime-version) opt_value "$@"; version=$OPTVAL ;;
      --spot) spot=1; OPTSHIFT=1 ;;
      --preemptible) preemptible=1; OPTSHIFT=1 ;;
      --) shift; extra=("$@"); break ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  require "$accelerator" "--accelerator-type TYPE" ACCELERATOR_TYPE
  if [[ ! $accelerator =~ ^v[0-9][a-z]*(pod)?-[0-9]+$ ]]; then
    die "--accelerator-type '$accelerator' is not of the form <generation>-<cores or chips> (e.g. v3-8, v5litepod-16)"
  fi
  if [[ -z $version ]]; then
    version=$(default_version "$accelerator")
    [[ -n $version ]] || die "no default --version for accelerator type '$accelerator'; pass --version"
  fi
  if ((spot && preemptible)); then
    die "--spot and --preemptible are mutually exclusive"
  fi

  scope_args
  local -a cmd=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${SCOPE_ARGS[@]}"
    "--accelerator-type=$accelerator" "--version=$version")
  if ((spot)); then cmd+=(--spot); fi
  if ((preemptible)); then cmd+=(--preemptible); fi
  run "${cmd[@]}" ${extra[@]+"${extra[@]}"}
}

main "$@"
