"""The one exception type that means "the user asked for something that cannot be done".

The CLI turns it into one line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""


class MdakitError(Exception):
    """A clear, user-facing error (bad input, missing file, unknown name).

    >>> str(MdakitError("unknown dataset 'foo'"))
    "unknown dataset 'foo'"
    """
