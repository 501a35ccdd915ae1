"""User-facing errors: each message is one sentence naming the file, row, column or parameter."""


class PipelineError(Exception):
    """Bad input or parameters: reported as one line, never as a traceback."""


class ParameterError(PipelineError):
    """A parameter's value is refused (a path outside the allowed folders, a folder that does not
    exist, columns that overlap): the command line exits 2, as for a value of the wrong type."""


class InputFileError(PipelineError):
    """A file (or the data path) is rejected as a whole."""


class DataQualityError(PipelineError):
    """Too many rows were quarantined, or none are left to train on."""


class TrainingError(PipelineError):
    """Gradient descent diverged (non-finite loss or gradient)."""


class PublishError(PipelineError):
    """An output could not be written (disk full, permissions); nothing was published."""


def exit_code(exc: PipelineError) -> int:
    """The command line's exit code for a user error: 2 for a parameter refused (its type or
    bounds, a path outside the allowed folders), 1 for anything else."""
    return 2 if isinstance(exc, ParameterError) else 1
