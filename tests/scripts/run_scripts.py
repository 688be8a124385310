"""Runs several scripts of this folder in one process, each as `python <script> <args>` would run it (`runpy`, with
its own `sys.argv`), so that a run of the 8-device checks pays the interpreter's, jax's and TensorFlow's start-up
once rather than once per script.

usage: run_scripts.py JSON  — JSON is a list of [script file name, arg, ...]. Each script's output follows a line
`=== <index> <script>`; a script that raises prints its traceback and `FAILED`, and the next one still runs.
"""
import json
import pathlib
import runpy
import sys
import traceback

HERE = pathlib.Path(__file__).resolve().parent

for index, (script, *args) in enumerate(json.loads(sys.argv[1])):
  print(f'=== {index} {script}', flush=True)
  sys.argv = [str(HERE / script), *args]
  try:
    runpy.run_path(sys.argv[0], run_name='__main__')
  except BaseException:  # pylint: disable=broad-except  (an assert or a SystemExit: report it, run the rest)
    traceback.print_exc(file=sys.stdout)
    print('FAILED', flush=True)
