"""`python -m jaxprompt {train,eval,infer,export} ...`, the same as the `jaxprompt` console script."""
import sys

from jaxprompt.cli.main import main

if __name__ == '__main__':
  sys.exit(main())
