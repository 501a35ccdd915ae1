"""User-facing errors: each message is one sentence naming the file, row, column or parameter."""


class PipelineError(Exception):
    """Bad input or parameters: reported as one line, never as a traceback."""


class InputFileError(PipelineError):
    """A file (or the data path) is rejected as a whole."""


class DataQualityError(PipelineError):
    """Too many rows were quarantined, or none are left to train on."""


class TrainingError(PipelineError):
    """Gradient descent diverged (non-finite loss or gradient)."""


class PublishError(PipelineError):
    """An output could not be written (disk full, permissions); nothing was published."""
