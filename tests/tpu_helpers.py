"""Shared pieces of the tpu_scripts/ tests: the scripts' names and flags, running them, and running the commands
they would send to the workers under bash (the `env` fixture with its loud fake gcloud is in conftest.py)."""
import os
import pathlib
import socket
import subprocess
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'tpu_scripts'
NAMES = ['create', 'setup', 'launch', 'status', 'ssh', 'teardown', 'unstick']
SCOPE = ['--tpu', 't1', '--zone', 'z1']
REQUIRED = {name: SCOPE for name in NAMES}
REQUIRED['create'] = SCOPE + ['--accelerator-type', 'v3-8']
REQUIRED['launch'] = SCOPE + ['--model_dir', 'gs://b/r', '--run', 'r1']
ENV_SETTINGS = [
    'TPU_NAME', 'ZONE', 'PROJECT', 'MODEL_DIR', 'ACCELERATOR_TYPE', 'RUNTIME_VERSION', 'JAXPROMPT_PACKAGE',
    'JAXPROMPT_VENV', 'DRY_RUN'
]
GCLOUD_TPU = ['gcloud', 'compute', 'tpus', 'tpu-vm']
HOST = socket.gethostname()


def write_exe(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text('#!/usr/bin/env bash\n' + text)
  path.chmod(0o755)
  return path


def run_script(name: str, args, env, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', str(SCRIPTS / f'{name}.sh'), *args], env=env, capture_output=True, text=True,
                        timeout=30, **kwargs)


def bash_words(line: str) -> list[str]:
  """Split a shell-quoted line exactly as bash would."""
  out = subprocess.run(['bash', '-c', 'eval "words=($1)"; printf "%s\\0" "${words[@]}"', '_', line],
                       capture_output=True, text=True, check=True)
  return out.stdout.split('\0')[:-1]


def dry_run(name: str, args, env) -> list[list[str]]:
  """The commands a script prints under --dry-run, one word list per command."""
  proc = run_script(name, ['--dry-run', *args], env)  # first: words after `--` are passed on verbatim
  assert proc.returncode == 0, proc.stderr
  return [bash_words(line) for line in proc.stdout.splitlines() if line.strip()]


def remote_command(words: list[str]) -> str:
  (command,) = [w for w in words if w.startswith('--command=')]
  return command[len('--command='):]


def run_remote(command: str, home: pathlib.Path, path_dirs=(), timeout=30) -> subprocess.CompletedProcess:
  """Run a worker command the way sshd does (`bash -c`), starting in HOME."""
  remote_env = {'HOME': str(home), 'PATH': os.pathsep.join([*map(str, path_dirs), '/usr/bin', '/bin'])}
  return subprocess.run(['bash', '-c', command], env=remote_env, cwd=home, capture_output=True, text=True,
                        timeout=timeout)


def wait_for(predicate, timeout=20.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError('timed out waiting for the background job')
