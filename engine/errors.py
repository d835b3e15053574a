"""One error type for everything a user can get wrong: the CLI prints its message as one line."""


class MomentsError(Exception):
    """A problem the user can fix; the message says what to do. Never shown with a traceback."""
