"""The one error type for mistakes a user can make (as opposed to bugs)."""


class ReprlabError(Exception):
    """A user-facing error: bad option or value, missing dataset, corrupt checkpoint.

    The message is one line that names the problem and says what to do. The CLI prints it
    without a traceback and exits non-zero.
    """
