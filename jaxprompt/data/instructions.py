"""Instruction / response rows (the Alpaca layout) as inputs and targets: a file task's `format='alpaca'`.

Each line of the JSONL file is one object
  {"instruction": "...", "input": "... (optional, may be empty)", "output": "..."}
(other keys are ignored) and becomes
  inputs   `TEMPLATE` with the instruction, and `INPUT_TEMPLATE`'s section when `input` is given and not empty:

             ### Instruction:
             Name the colour of the sky.

             ### Input:
             On a clear day.

             ### Response:

  targets  `output`, as it is
so a causal LM reads the prompt and continues it with the response (the loss on the response only). Each of the
three values must be a string; a missing `instruction` or `output`, or any other type, is one DataError naming the
file and line.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxprompt.errors import DataError

FORMAT = 'alpaca'
TEMPLATE = '### Instruction:\n{instruction}\n\n{input_section}### Response:\n'
INPUT_TEMPLATE = '### Input:\n{input}\n\n'
FIELDS = ('instruction', 'input', 'output')


def _text(path: str, line: int, row: Mapping[str, Any], field: str, required: bool) -> str:
  value = row.get(field)
  if value is None and not required:
    return ''
  if field not in row:
    raise DataError(f'{path}:{line}: no field {field!r} (an instruction row has "instruction", optional "input" and '
                    f'"output"; its fields: {sorted(row)})')
  if not isinstance(value, str):
    raise DataError(f'{path}:{line}: field {field!r} must be a string, got {type(value).__name__}')
  return value


def prompt(instruction: str, input_text: str = '') -> str:
  """The inputs text of an instruction (and its input, when not empty)."""
  section = INPUT_TEMPLATE.format(input=input_text) if input_text else ''
  return TEMPLATE.format(instruction=instruction, input_section=section)


def example(path: str, line: int, row: Mapping[str, Any]) -> tuple[str, str]:
  """(inputs, targets) of one parsed JSONL row."""
  instruction = _text(path, line, row, 'instruction', True)
  return prompt(instruction, _text(path, line, row, 'input', False)), _text(path, line, row, 'output', True)
