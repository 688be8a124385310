"""Tests for tpu_scripts/setup.sh and launch.sh: the commands they send to the workers.

Helpers come from tests/tpu_helpers.py and the `env` fixture (a loud fake gcloud first on PATH, checked after
each test) from conftest.py. The worker-side commands run here under bash with a temporary HOME and fake tools.
"""
import pathlib
import re

from tests.tpu_helpers import (
    GCLOUD_TPU,
    HOST,
    REQUIRED,
    SCOPE,
    bash_words,
    dry_run,
    remote_command,
    run_remote,
    run_script,
    wait_for,
    write_exe,
)

# ---------------------------------------------------------------- setup.sh


def _fake_python(tmp_path: pathlib.Path) -> pathlib.Path:
  """A stand-in interpreter whose `-m venv DIR` makes a venv that records every pip/python call."""
  calls = tmp_path / "venv_calls"
  template = write_exe(
      tmp_path / "venv_python", f'printf "%s\\0" "$@" >> {calls}\necho >> {calls}\n'
      'if [[ $1 == -c ]]; then echo "8 devices (8 local)"; fi\n')
  return write_exe(
      tmp_path / "python3.11", f"""
[[ $1 == -m && $2 == venv ]] || exit 3
mkdir -p "$3/bin"
cp {template} "$3/bin/python"
printf '#!/bin/sh\\n' > "$3/bin/jaxprompt"
chmod +x "$3/bin/jaxprompt"
""")


def _venv_calls(tmp_path: pathlib.Path) -> list[list[str]]:
  lines = (tmp_path / "venv_calls").read_text().split("\n")
  return [entry.split("\0")[:-1] for entry in lines if entry]


def test_setup_installs_on_all_workers(tmp_path, env):
  (cmd,) = dry_run("setup", SCOPE, env)
  assert cmd[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]
  home = tmp_path / "home"
  home.mkdir()
  python = _fake_python(tmp_path)
  (cmd,) = dry_run("setup", [*SCOPE, "--python", str(python), "--check-devices"], env)
  proc = run_remote(remote_command(cmd), home)
  assert proc.returncode == 0, proc.stderr
  venv_bin = home / "jaxprompt_venv" / "bin"
  assert (venv_bin / "jaxprompt").exists()
  calls = _venv_calls(tmp_path)
  assert ["-m", "pip", "install", "jaxprompt[tpu]"] in calls
  assert ["-c", "import jaxprompt"] in calls
  assert f"[{HOST}] 8 devices (8 local)" in proc.stdout
  assert f"[{HOST}] ready: {venv_bin}/jaxprompt (jaxprompt[tpu])" in proc.stdout


def test_setup_git_url_and_missing_interpreter(tmp_path, env):
  (cmd,) = dry_run("setup", [
      *SCOPE, "--package", "git+https://github.com/o/jaxprompt.git@main", "--python",
      str(tmp_path / "no_such_python")
  ], env)
  proc = run_remote(remote_command(cmd), tmp_path)
  assert proc.returncode == 1
  assert f"{tmp_path}/no_such_python does not exist" in proc.stderr
  python = _fake_python(tmp_path)
  (cmd,) = dry_run("setup",
                   [*SCOPE, "--package", "git+https://github.com/o/jaxprompt.git@main", "--python",
                    str(python)], env)
  proc = run_remote(remote_command(cmd), tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert ["-m", "pip", "install", "jaxprompt[tpu] @ git+https://github.com/o/jaxprompt.git@main"] in \
      _venv_calls(tmp_path)


def test_setup_local_wheel_is_copied_then_installed(tmp_path, env):
  wheel = tmp_path / "dist" / "jaxprompt-0.1.0-py3-none-any.whl"
  wheel.parent.mkdir()
  wheel.write_bytes(b"not really a wheel")
  home = tmp_path / "home"
  home.mkdir()
  python = _fake_python(tmp_path)
  scp, ssh = dry_run("setup", [*SCOPE, "--package", str(wheel), "--python", str(python)], env)
  assert scp == GCLOUD_TPU + ["scp", str(wheel), f"t1:{wheel.name}", "--zone=z1", "--worker=all"]
  assert ssh[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]
  proc = run_remote(remote_command(ssh), home)
  assert proc.returncode == 0, proc.stderr
  assert ["-m", "pip", "install", f"jaxprompt[tpu] @ file://{home}/{wheel.name}"] in _venv_calls(tmp_path)


def test_setup_bad_package_paths(tmp_path, env):
  for package, message in [(str(tmp_path / "missing.whl"), "looks like a local path but does not exist"),
                           (str(tmp_path), "is a directory; build a wheel first"),
                           (__file__, "is a local file but not a wheel")]:
    proc = run_script("setup", [*SCOPE, "--package", package, "--dry-run"], env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- launch.sh

XXL_FLAGS = [
    "--gin_file",
    "gin_configs/models/t5_1_1_lm100k_xxl.gin",
    "--gin_file=gin_configs/runs/prompt_tuning.gin",
    "--gin.MIXTURE_OR_TASK_NAME='taskless_super_glue_boolq_v102'",
    "--gin.CLASS_LABELS",
    "['True', 'False']",
]


def _fake_worker(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """A worker home with a venv whose `jaxprompt` records argv, cwd and one env var; and a bin dir
  with a recording gcloud (the worker's own Cloud SDK, used to upload logs)."""
  home = tmp_path / "home"
  venv_bin = home / "jaxprompt_venv" / "bin"
  venv_bin.mkdir(parents=True)
  write_exe(
      venv_bin / "jaxprompt", f'printf "%s\\0" "$@" > {tmp_path}/train_argv\n'
      f'pwd > {tmp_path}/train_cwd\necho "JP_TEST=${{JP_TEST:-}}"\n'
      'echo "training output"\n')
  worker_bin = tmp_path / "worker_bin"
  worker_bin.mkdir()
  write_exe(worker_bin / "gcloud", f'printf "%s\\0" "$@" > {tmp_path}/gcloud_argv\n')
  return home, worker_bin


def test_launch_commands_and_remote_quoting(tmp_path, env):
  gin_dir = tmp_path / "gin_configs"
  gin_dir.mkdir()
  args = [
      *SCOPE, "--model_dir", "gs://b/r/", "--gin_dir", f"{gin_dir}/", "--run", "boolq-1", *XXL_FLAGS, "--env",
      "JP_TEST=a b", "--copy-logs", "--", "--gin.X='$HOME; `x`'", "--tfds_data_dir=gs://b/tfds"
  ]
  mkdir, scp, launch = dry_run("launch", args, env)
  assert mkdir == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all", "--command=mkdir -p jaxprompt_runs/boolq-1"]
  assert scp == GCLOUD_TPU + [
      "scp", "--recurse", str(gin_dir), "t1:jaxprompt_runs/boolq-1/", "--zone=z1", "--worker=all"
  ]
  assert launch[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]

  home, worker_bin = _fake_worker(tmp_path)
  proc = run_remote(remote_command(launch), home, [worker_bin])
  assert proc.returncode == 0, proc.stderr
  log = home / "jaxprompt_logs" / "boolq-1.log"
  assert f"[{HOST}] started jaxprompt train (pid " in proc.stdout and str(log) in proc.stdout
  wait_for(lambda: log.exists() and "exit status" in log.read_text())
  wait_for(lambda: (tmp_path / "gcloud_argv").exists())

  # Every gin flag reaches the training process byte for byte, through two remote shells.
  assert (tmp_path / "train_argv").read_text().split("\0")[:-1] == [
      "train",
      "--gin_file=gin_configs/models/t5_1_1_lm100k_xxl.gin",
      "--gin_file=gin_configs/runs/prompt_tuning.gin",
      "--gin.MIXTURE_OR_TASK_NAME='taskless_super_glue_boolq_v102'",
      "--gin.CLASS_LABELS=['True', 'False']",
      "--gin.MODEL_DIR='gs://b/r'",
      "--gin.X='$HOME; `x`'",
      "--tfds_data_dir=gs://b/tfds",
  ]
  assert (tmp_path / "train_cwd").read_text().strip() == str(home / "jaxprompt_runs" / "boolq-1")
  text = log.read_text()
  assert "JP_TEST=a b" in text and "training output" in text
  assert f"{HOST}: exit status 0" in text
  assert (tmp_path / "gcloud_argv").read_text().split("\0")[:-1] == [
      "storage", "cp", str(log), f"gs://b/r/logs/boolq-1.{HOST}.log"
  ]


def test_launch_reports_missing_venv(tmp_path, env):
  (cmd,) = dry_run("launch", REQUIRED["launch"], env)
  proc = run_remote(remote_command(cmd), tmp_path)
  assert proc.returncode == 1
  assert f"{tmp_path}/jaxprompt_venv/bin/jaxprompt not found; run setup.sh first" in proc.stderr


def test_launch_failing_job_logs_exit_status(tmp_path, env):
  home, _ = _fake_worker(tmp_path)
  write_exe(home / "jaxprompt_venv" / "bin" / "jaxprompt", "echo boom >&2\nexit 3\n")
  (cmd,) = dry_run("launch", REQUIRED["launch"], env)
  assert run_remote(remote_command(cmd), home).returncode == 0  # the launcher does not wait
  log = home / "jaxprompt_logs" / "r1.log"
  wait_for(lambda: log.exists() and "exit status" in log.read_text())
  assert "boom" in log.read_text() and f"{HOST}: exit status 3" in log.read_text()


def test_launch_rejects_local_model_dir(env):
  proc = run_script("launch", [*SCOPE, "--model_dir", "/tmp/run", "--dry-run"], env)
  assert proc.returncode == 2
  assert "--model_dir '/tmp/run' is not a gs:// path" in proc.stderr
  assert "--allow-local-model-dir" in proc.stderr
  (cmd,) = dry_run("launch", [*SCOPE, "--model_dir", "/tmp/run", "--allow-local-model-dir", "--run", "x"], env)
  assert "--gin.MODEL_DIR=\\'/tmp/run\\'" in remote_command(cmd)
  proc = run_script("launch",
                    [*SCOPE, "--model_dir", "/tmp/run", "--allow-local-model-dir", "--copy-logs", "--dry-run"], env)
  assert proc.returncode == 2 and "--copy-logs needs a gs:// --model_dir" in proc.stderr


def test_launch_errors(tmp_path, env):
  cases = [
      (SCOPE, "missing --model_dir", "MODEL_DIR"),
      ([*REQUIRED["launch"], "--gin.MODEL_DIR='gs://x'"], "do not pass --gin.MODEL_DIR='gs://x'", "--model_dir"),
      ([*REQUIRED["launch"], "--", "--gin.MODEL_DIR=x"], "do not pass --gin.MODEL_DIR=x", "--model_dir"),
      ([*REQUIRED["launch"], "--gin_dir", str(tmp_path / "nope")], "is not a directory", "--gin_dir"),
      ([*SCOPE, "--model_dir", "gs://b/r", "--run", "../up"], "--run '../up' may only contain", "letters"),
      ([*REQUIRED["launch"], "--env", "1X=2"], "--env '1X=2' must look like KEY=VALUE", "KEY"),
      ([*SCOPE, "--model_dir", "gs://b/it's"], "contains a single quote", "gin string"),
  ]
  for args, message, detail in cases:
    proc = run_script("launch", [*args, "--dry-run"], env)
    assert proc.returncode == 2 and message in proc.stderr and detail in proc.stderr, (args, proc.stderr)


def test_launch_default_run_name(env):
  env["MODEL_DIR"] = "gs://bucket/boolq xxl"
  (cmd,) = dry_run("launch", SCOPE, env)
  call = bash_words(remote_command(cmd).splitlines()[-1])
  assert call[0] == "jp_remote_launch"
  assert re.fullmatch(r"boolq_xxl-\d{8}-\d{6}", call[1]), call[1]
  assert "--gin.MODEL_DIR='gs://bucket/boolq xxl'" in call
