"""Errors a person caused and can fix: reported as one line, exit status 2."""


class UserError(Exception):
    """Bad input (manifest, flag, config); the message names what is wrong."""
