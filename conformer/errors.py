"""Errors reported to the user as one clear line by the CLI."""


class UserInputError(Exception):
    """Bad input from the user (a file, an option): the CLI prints it as one line, exit code 2.

    The message must name the input (file, line, option) and the reason.
    """
