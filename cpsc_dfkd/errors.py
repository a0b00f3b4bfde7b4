"""The one exception type a user is meant to read: the CLI prints it without a traceback."""


class UserError(Exception):
    """Bad input from the user (config, file, data); the message says what is wrong and how to fix it."""
