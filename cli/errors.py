"""The one exception type of the command line."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing file); printed as one line, exit status 2."""
