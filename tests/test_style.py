"""The tree stays formatted (yapf) and lint-clean (ruff), as configured in pyproject.toml. Fix with:

  .venv/bin/yapf -i -r -p jaxprompt tests bench tpu_scripts && .venv/bin/ruff check --fix .
"""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYTHON_TREES = ('jaxprompt', 'tests', 'bench', 'tpu_scripts')


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_finds_nothing():
  proc = _run('ruff', 'check', '--output-format', 'concise', '--no-cache', '.')
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow  # yapf is pure Python: ~13 s of CPU over the tree
def test_yapf_changes_nothing():
  proc = _run('yapf', '--diff', '--recursive', '--parallel', *PYTHON_TREES)
  changed = sorted({line[4:].split('\t')[0] for line in proc.stdout.splitlines() if line.startswith('+++ ')})
  assert proc.returncode == 0 and not changed, f'not formatted: {changed}\n{proc.stderr}'
