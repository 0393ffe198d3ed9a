"""The one exception type for user errors (bad input, bad config, bad usage).

The CLI prints a `DetsegError` as a single line `detseg: error: <message>` and exits
with code 2; any other exception is an internal error (exit 1, with traceback).
"""


class DetsegError(Exception):
    """A user-facing error: the message names the file (when there is one) and the problem."""

    def __init__(self, message: str, path: "str | None" = None):
        self.path = None if path is None else str(path)
        self.problem = message  # the problem alone, without the path (for counted skips)
        super().__init__(f"{self.path}: {message}" if self.path else message)
