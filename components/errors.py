"""Errors a user can act on. The CLI prints their message and exits non-zero."""


class MlpipeError(Exception):
    """Base class: the message names the file, key or value and what is allowed."""


class ConfigError(MlpipeError):
    pass


class DataError(MlpipeError):
    pass


class ValidationFailed(MlpipeError):
    """The data-validation suite failed; the pipeline stops before training."""

    def __init__(self, message: str, failures: list[str]):
        super().__init__(message)
        self.failures = failures
