"""Errors worded for the user, and the helpers that word them.

Every problem a user can fix (a config key, a path, a flag, a file's content) is a `UserError`
whose message says what is wrong and how to fix it, in one line. main.py and the tools' main()
functions catch this one base and print `error: <message>` with exit status 2.
"""
import difflib


class UserError(ValueError):
    """A problem the user can fix, worded for them: what is wrong and how to fix it."""


class ConfigError(UserError):
    """A problem with what the user asked for: a config file or key, a flag, a path to read or write."""


def did_you_mean(word, candidates):
    """"; did you mean 'x'?" for the candidate closest to `word`, or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return "; did you mean %r?" % close[0] if close else ""


def first_line(error):
    """The first line of an exception's message (TensorFlow's OpErrors go on for lines)."""
    text = (getattr(error, "message", None) or str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
