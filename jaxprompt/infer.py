"""`python -m jaxprompt.infer ...` = `jaxprompt infer ...` (t5x-style module entry point)."""
import sys

from jaxprompt.cli import main

if __name__ == '__main__':
  sys.exit(main(['infer', *sys.argv[1:]]))
