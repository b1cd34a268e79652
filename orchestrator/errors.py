"""User-caused errors: one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

from detectors.config import ConfigError
from detectors.data import DataError
from detectors.models import PretrainedWeightsError

USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    PretrainedWeightsError,
    # A file or folder the user named that cannot be read or written (missing, a file where
    # a folder goes, no permission, a full disk), or a server they named that is not there.
    OSError,
)
EXIT_USER_ERROR = 2
