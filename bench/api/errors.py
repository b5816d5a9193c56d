class BenchError(Exception):
    """A user-facing problem: the message is one line naming the problem and the fix.

    The CLI prints it as `error: <message>` and exits with status 2, without a traceback.
    """
