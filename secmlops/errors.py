"""Errors that the CLI turns into a one-line message and a non-zero exit.

Every failure a user can cause (bad input, missing file, failed check) raises a subclass of
`SecMLOpsError` whose message names the problem and the offending path or value.
"""


class SecMLOpsError(Exception):
    """Base class for every error that is the user's input, not a bug."""


class DataError(SecMLOpsError):
    """A dataset, annotation file, video or image is missing, malformed or inconsistent."""


class ModelError(SecMLOpsError):
    """A model directory or model configuration is missing, malformed or inconsistent."""
