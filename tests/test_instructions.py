"""Instruction / response JSONL (Alpaca layout) as a file task: the template, the --task spec, row errors."""
import json

import pytest

from jaxprompt.data import custom, instructions, task_spec
from jaxprompt.errors import DataError

ROWS = [
    {'instruction': 'Name the colour of the sky.', 'input': 'On a clear day.', 'output': 'Blue.'},
    {'instruction': 'Say hello.', 'output': 'Hello!', 'id': 7},  # no input; other keys ignored
    {'instruction': 'Count to two.', 'input': '', 'output': '1, 2'},  # an empty input is no input
]


def _write(path, rows):
  path.write_text('\n'.join(r if isinstance(r, str) else json.dumps(r) for r in rows) + '\n')
  return str(path)


def test_rows_become_the_documented_template():
  assert instructions.prompt('Name the colour of the sky.', 'On a clear day.') == (
      '### Instruction:\nName the colour of the sky.\n\n### Input:\nOn a clear day.\n\n### Response:\n')
  assert instructions.prompt('Say hello.') == '### Instruction:\nSay hello.\n\n### Response:\n'


def test_a_task_spec_reads_instruction_rows(tmp_path):
  path = _write(tmp_path / 'train.jsonl', ROWS)
  task = task_spec.register_task_spec(f'name=jp_test_alpaca,train={path},format=alpaca')
  try:
    texts = list(task.get_dataset(None, 'train', shuffle=False).as_numpy_iterator())
    assert [t['inputs_pretokenized'].decode() for t in texts
           ] == [instructions.prompt(r['instruction'], r.get('input', '')) for r in ROWS]
    assert [t['targets_pretokenized'].decode() for t in texts] == ['Blue.', 'Hello!', '1, 2']
  finally:
    custom.unregister_file_task('jp_test_alpaca')


@pytest.mark.parametrize('bad, message', [
    ({'instruction': 'x'}, "train.jsonl:2: no field 'output'"),
    ({'output': 'y'}, "train.jsonl:2: no field 'instruction'"),
    ({'instruction': 'x', 'input': 3, 'output': 'y'}, "train.jsonl:2: field 'input' must be a string, got int"),
    ('{"instruction": "x", ', 'train.jsonl:2: invalid JSON'),
    ('["x", "y"]', 'train.jsonl:2: expected a JSON object per line'),
])
def test_a_malformed_row_names_file_and_line(tmp_path, bad, message):
  path = _write(tmp_path / 'train.jsonl', [ROWS[0], bad])
  with pytest.raises(DataError, match=message):
    custom.register_file_task('jp_test_alpaca_bad', train=path, format='alpaca')
