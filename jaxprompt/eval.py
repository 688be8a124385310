"""`python -m jaxprompt.eval ...` = `jaxprompt eval ...` (t5x-style module entry point)."""
import sys

from jaxprompt.cli import main

if __name__ == '__main__':
  sys.exit(main(['eval', *sys.argv[1:]]))
