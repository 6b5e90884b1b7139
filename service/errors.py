"""Errors a user can cause; the CLI maps them to exit code 2 and the service to 4xx."""


class UserError(Exception):
    """A mistake the user can fix; its message is one line that says what to fix."""
