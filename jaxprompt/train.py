"""`python -m jaxprompt.train ...` = `jaxprompt train ...` (t5x-style module entry point)."""
import sys

from jaxprompt.cli import main

if __name__ == '__main__':
  sys.exit(main(['train', *sys.argv[1:]]))
