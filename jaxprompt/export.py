"""`python -m jaxprompt.export ...` = `jaxprompt export ...` (t5x-style module entry point)."""
import sys

from jaxprompt.cli import main

if __name__ == '__main__':
  sys.exit(main(['export', *sys.argv[1:]]))
