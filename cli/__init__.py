"""The command lines: one module per program, with its flags, their defaults and its usage.

Each program parses its arguments before it imports the module that does the work, so `--help` and a
mistyped flag answer at once instead of after TensorFlow has loaded (about 3 s). The programs are
installed as console scripts (setup.py); from a clone, `python main.py` and `python -m <module>` run
the same code.
"""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and each flag's default after its help (where there is one to show)."""

    def _get_help_string(self, action):
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if action.option_strings and not unset and action.default is not argparse.SUPPRESS and "default" not in text:
            text += " (default: %(default)s)"
        return text


def parser(description, **kwargs):
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter, **kwargs)


def add_tokenizer(p, default, help):
    """--tokenizer (the original's name --encoder_path too), and the original's --use_gpt2_tokenizer."""
    p.add_argument("--tokenizer", "--encoder_path", dest="tokenizer", default=default, help=help)
    p.add_argument("--use_gpt2_tokenizer", action="store_true",
                   help="the original's flag: the same as --tokenizer gpt2")


def tokenizer_choice(p, args):
    """--use_gpt2_tokenizer folded into args.tokenizer; with another --tokenizer it is a usage error."""
    if args.use_gpt2_tokenizer:
        if args.tokenizer not in (None, "gpt2"):
            p.error("--use_gpt2_tokenizer and --tokenizer %s name two tokenizers: give one" % args.tokenizer)
        args.tokenizer = "gpt2"
    return args.tokenizer
