"""`python main.py ...` from a clone: the `gpt-neo` program (its flags and usage: cli/gpt_neo.py)."""
import sys

from gpt_neo_mtf.cli.gpt_neo import main

if __name__ == "__main__":
    sys.exit(main())
