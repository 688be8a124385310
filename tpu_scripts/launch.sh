#!/usr/bin/env bash
# Start `jaxprompt train` in the background on every worker of a Cloud TPU VM.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $SCRIPT_NAME --tpu NAME --zone ZONE --model_dir gs://BUCKET/DIR [options]
                 [--gin_file FILE]... [--gin.NAME=VALUE]... [-- extra 'jaxprompt train' flags]

Run 'jaxprompt train' under nohup on all workers at once (gcloud ... ssh --worker=all), so a
multi-host slice trains as one JAX program. Each worker keeps its output in
~/jaxprompt_logs/<run>.log and runs from ~/jaxprompt_runs/<run>/ (where --gin_dir is copied).

Required (flag or environment variable):
  --tpu NAME               TPU VM name                                       [TPU_NAME]
  --zone ZONE              zone of the TPU VM                                [ZONE]
  --model_dir DIR          checkpoints/summaries; must be gs://... because every worker
                           writes to it and the VM disks vanish at teardown  [MODEL_DIR]
Options:
  --gin_dir DIR            local directory of gin files copied (scp --recurse) into the run
                           directory, so '--gin_file=<basename DIR>/...' finds them
  --gin_file FILE          passed on as --gin_file=FILE (repeatable, order kept)
  --gin.NAME=VALUE         passed on as --gin.NAME=VALUE (repeatable); quote gin strings:
                           --gin.MIXTURE_OR_TASK_NAME="'taskless_super_glue_boolq_v102'"
  --run NAME               run name for logs (default: <basename of model_dir>-<UTC time>)
  --env KEY=VALUE          environment variable for the training process (repeatable)
  --copy-logs              when training ends, copy each worker's log to
                           <model_dir>/logs/<run>.<hostname>.log (gcloud storage cp / gsutil cp)
  --venv DIR               venv made by setup.sh, relative to the home directory
                           (default: jaxprompt_venv)                         [JAXPROMPT_VENV]
  --allow-local-model-dir  accept a model_dir that is not gs:// (single-host experiments only)
  --project PROJECT        Google Cloud project (default: gcloud config)      [PROJECT]
  --dry-run                print the gcloud commands instead of running them  [DRY_RUN=1]
  -h, --help               show this help

Words after '--' are appended to the 'jaxprompt train' command unchanged.
The MODEL_DIR gin macro is set from --model_dir; do not pass --gin.MODEL_DIR yourself.

Example:
  $SCRIPT_NAME --tpu pt-xxl --zone europe-west4-a --model_dir gs://my-bucket/boolq_xxl \\
    --gin_dir gin_configs --gin_file gin_configs/models/t5_1_1_lm100k_xxl.gin \\
    --gin_file gin_configs/runs/prompt_tuning.gin \\
    --gin.MIXTURE_OR_TASK_NAME="'taskless_super_glue_boolq_v102'" --copy-logs
EOF
}

# Runs on each worker (shipped with `declare -f`): start the job detached from the ssh session.
jp_remote_launch() {
  local run=$1 venv=$2 log_dest=$3
  shift 3
  set -euo pipefail
  local host log
  host=$(hostname)
  if [[ $venv != /* ]]; then venv=$HOME/$venv; fi
  if [[ ! -x $venv/bin/jaxprompt ]]; then
    echo "[$host] error: $venv/bin/jaxprompt not found; run setup.sh first" >&2
    return 1
  fi
  mkdir -p "$HOME/jaxprompt_logs" "$HOME/jaxprompt_runs/$run"
  log=$HOME/jaxprompt_logs/$run.log
  cd "$HOME/jaxprompt_runs/$run"
  # Append, so relaunching a run (e.g. after preemption) keeps the earlier attempts' output.
  nohup bash -c "$(declare -f jp_remote_job); jp_remote_job $(printf '%q ' "$log" "$venv" "$log_dest" "$@")" \
    >>"$log" 2>&1 </dev/null &
  echo "[$host] started jaxprompt train (pid $!); log: $log"
}

# Runs under nohup on each worker: the training command, then the optional log upload.
jp_remote_job() {
  local log=$1 venv=$2 log_dest=$3
  shift 3
  local host rc=0
  host=$(hostname)
  export PATH="$venv/bin:$PATH"
  echo "[$(date -u +%FT%TZ)] $host in $PWD: $(printf '%q ' "$@")"
  "$@" || rc=$?
  echo "[$(date -u +%FT%TZ)] $host: exit status $rc"
  if [[ -n $log_dest ]]; then
    local dest
    dest=$log_dest/$(basename "$log" .log).$host.log
    if command -v gcloud >/dev/null 2>&1; then
      gcloud storage cp "$log" "$dest" || echo "$host: warning: could not copy the log to $dest"
    elif command -v gsutil >/dev/null 2>&1; then
      gsutil cp "$log" "$dest" || echo "$host: warning: could not copy the log to $dest"
    else
      echo "$host: warning: neither gcloud nor gsutil found; log not copied to $dest"
    fi
  fi
  return "$rc"
}

reject_model_dir_binding() {
  if [[ $1 == --gin.MODEL_DIR=* || $1 == --gin.MODEL_DIR ]]; then
    die "do not pass $1; set the model directory with --model_dir (it becomes --gin.MODEL_DIR)"
  fi
}

main() {
  local model_dir=${MODEL_DIR:-} gin_dir='' run='' venv=${JAXPROMPT_VENV:-jaxprompt_venv} copy_logs=0 allow_local=0
  local -a train_flags=() extra=() envs=()
  while (($#)); do
    if common_flag "$@"; then shift "$OPTSHIFT"; continue; fi
    case $1 in
      --gin.*)
        reject_model_dir_binding "$1"
        opt_value "$@"
        train_flags+=("${1%%=*}=$OPTVAL")
        shift "$OPTSHIFT"
        continue
        ;;
    esac
    case $(flag_key "$1") in
      --model-dir) opt_value "$@"; model_dir=$OPTVAL ;;
      --gin-dir) opt_value "$@"; gin_dir=$OPTVAL ;;
      --gin-file) opt_value "$@"; train_flags+=("--gin_file=$OPTVAL") ;;
      --run) opt_value "$@"; run=$OPTVAL ;;
      --venv) opt_value "$@"; venv=$OPTVAL ;;
      --env)
        opt_value "$@"
        [[ $OPTVAL =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env '$OPTVAL' must look like KEY=VALUE"
        envs+=("$OPTVAL")
        ;;
      --copy-logs) copy_logs=1; OPTSHIFT=1 ;;
      --allow-local-model-dir) allow_local=1; OPTSHIFT=1 ;;
      --)
        shift
        local arg
        for arg in "$@"; do reject_model_dir_binding "$arg"; done
        extra=("$@")
        break
        ;;
      *) unknown_flag "$1" ;;
    esac
    shift "$OPTSHIFT"
  done

  require_tpu_and_zone
  require "$model_dir" "--model_dir gs://BUCKET/DIR" MODEL_DIR
  require "$venv" "--venv DIR" JAXPROMPT_VENV
  model_dir=${model_dir%/}
  if [[ $model_dir != gs://?* ]] && ((!allow_local)); then
    die "--model_dir '$model_dir' is not a gs:// path: on a multi-host slice every worker must write to the" \
      "same bucket (and the VM disks are deleted at teardown); pass --allow-local-model-dir to override"
  fi
  if [[ $model_dir == *"'"* ]]; then
    die "--model_dir '$model_dir' contains a single quote, which cannot appear in a gin string"
  fi
  if ((copy_logs)) && [[ $model_dir != gs://* ]]; then
    die "--copy-logs needs a gs:// --model_dir"
  fi
  if [[ -n $gin_dir ]]; then
    gin_dir=${gin_dir%/}
    [[ -d $gin_dir ]] || die "--gin_dir '$gin_dir' is not a directory"
  fi
  if [[ -z $run ]]; then
    run=$(basename "$model_dir" | tr -c 'A-Za-z0-9._\n-' '_')-$(date -u +%Y%m%d-%H%M%S)
  fi
  check_run_name "$run"
  venv=${venv#\~/}

  local -a cmd=(jaxprompt train ${train_flags[@]+"${train_flags[@]}"} "--gin.MODEL_DIR='$model_dir'"
    ${extra[@]+"${extra[@]}"})
  if ((${#envs[@]})); then cmd=(env "${envs[@]}" "${cmd[@]}"); fi
  local log_dest=''
  if ((copy_logs)); then log_dest=$model_dir/logs; fi

  scope_args
  if [[ -n $gin_dir ]]; then
    tpu_ssh all "mkdir -p jaxprompt_runs/$run"
    run gcloud compute tpus tpu-vm scp --recurse "$gin_dir" "$TPU_NAME:jaxprompt_runs/$run/" \
      "${SCOPE_ARGS[@]}" --worker=all
  fi
  tpu_ssh all "$(remote_call "jp_remote_launch jp_remote_job" "$run" "$venv" "$log_dest" "${cmd[@]}")"
}

main "$@"
