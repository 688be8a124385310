"""The `jaxprompt` command line (`jaxprompt.cli.main:main` is the console script; `python -m jaxprompt` runs it too).

  parser      argparse flags and t5x's `--gin.NAME=VALUE` overrides
  gin_config  gin search paths, files and bindings: the one place gin is parsed (the demo uses it too)
  console     native-log guard, log lines on stderr, exceptions -> one `jaxprompt: error:` line + exit code
  run_dir     eval / infer on a training MODEL_DIR: its config.gin is the configuration
  main        the command table and dispatch (`from jaxprompt.cli.main import main`)
"""
