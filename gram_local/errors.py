"""Every error gram-local raises on purpose, with the exit code the CLI uses for it.

Front ends never need to guess whether a failure was the user's input (2) or the machine (1):
each class carries `exit_code`, and its message is fit to show a user as it is.

    GramLocalError                 1  base class
      InputError                   2  the input cannot be judged as given
        ContextOverflowError       2  a prompt over the context (never truncated silently)
        BatchUsageError            2  a batch cannot start as asked; OUT unchanged
          SettingsMismatchError    2  OUT holds results of other settings
        ConversionError            2  a checkpoint that cannot be converted as given
        DataError                  2  a benchmark file that cannot be read
        PlotUnavailableError       2  --plot without matplotlib
        RequestSyntaxError         2  a service request body that is not JSON (HTTP 400)
        PayloadTooLargeError       2  a service request body over the size limit (HTTP 413)
        UnauthorizedError          2  a service request without the right API key (HTTP 401)
        UnsafeBindError            2  a service asked to listen beyond this machine without a key
      ModelError                   1  the model cannot be found, read or loaded
        ModelNotFoundError         2  a name or path that resolves to nothing
        ModelFileError             1  a file that is not a GGUF model gram-local can load
        ChecksumError              1  a file's SHA-256 differs from the pinned one
          SourceChecksumError      1  ... a source file or converter output, with what to do
        UnsupportedCPUError        1  the build uses instructions this CPU lacks
      EngineError                  1  llama.cpp failed at run time (decode, memory)
        ContextAllocationError     1  a context could not be created (with the bytes it needed)
      BackendError                 1  a remote backend failed (HTTP, protocol, identity)
      ConversionFailed             1  a valid conversion failed while running
      DownloadError                1  a benchmark download failed
      ServiceBusyError             1  the service's queue is full, or its model is still loading (HTTP 503)
    Cancelled                     130 a request was cancelled before it finished
      DeadlineExceededError       130 a service request ran past its deadline and was cancelled (HTTP 504)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_FAILED_ROWS = 3
EXIT_INTERRUPTED = 130


class GramLocalError(Exception):
    """Base class: a failure with a message fit to show a user as it is."""

    exit_code = EXIT_RUNTIME


class InputError(GramLocalError):
    """The input cannot be judged as given (empty text, too few responses, bad JSON...)."""

    exit_code = EXIT_USAGE


class ContextOverflowError(InputError):
    """The prompt does not fit the context window; never truncated silently."""

    def __init__(self, n_tokens: int, limit: int, what: str = "prompt") -> None:
        self.n_tokens = n_tokens
        self.limit = limit
        super().__init__(
            f"the {what} is {n_tokens} tokens, over the limit of {limit} tokens "
            "(the context size less the think budget and answer); shorten the texts, "
            "lower --max-think-tokens or raise --ctx"
        )


class BatchUsageError(InputError):
    """The batch cannot start as asked (exit 2); nothing in OUT was changed."""


class BatchOutputError(GramLocalError):
    """OUT cannot be written (disk full, no permission): the records written before it stay (exit 1)."""


class SettingsMismatchError(BatchUsageError):
    """OUT holds results made with other settings: mixing them would make OUT meaningless."""

    def __init__(self, path: Path, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.differences = dict(differences)
        shown = "; ".join(f"{key}: {old!r} in OUT, {new!r} now" for key, (old, new) in sorted(differences.items()))
        super().__init__(
            f"{path} was made with other settings ({shown}); rerun with the same settings to "
            "resume, use another -o, or pass --force to start over"
        )


class ConversionError(InputError):
    """The checkpoint (or the request) cannot be converted as given; nothing was written."""


class DataError(InputError):
    """A benchmark data file is missing or not in the expected format."""


class PlotUnavailableError(InputError):
    """Plots were asked for but matplotlib is not installed."""


class RequestSyntaxError(InputError):
    """A service request body that cannot be read as JSON at all (HTTP 400; a readable one with wrong fields is 422)."""


class PayloadTooLargeError(InputError):
    """A request body over the service's size limit; nothing of it was judged."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(f"the request body is over the limit of {limit} bytes")


class UnauthorizedError(InputError):
    """A service request without the bearer token the service was started with."""


class UnsafeBindError(InputError):
    """`serve` asked to listen on an address other machines can reach, without an API key."""


class ModelError(GramLocalError):
    """The model cannot be found, read or loaded."""


class ModelNotFoundError(ModelError):
    """A model name or path that resolves to nothing usable; a usage problem, hence exit 2."""

    exit_code = EXIT_USAGE


class ModelFileError(ModelError):
    """A model file llama.cpp must not be given: not a GGUF, damaged, truncated, or not a GRAM-RR-shaped Llama."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path} is not a usable GGUF model: {problem}")


class ChecksumError(ModelError):
    """A file's SHA-256 differs from the pinned one."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        self.path = path
        self.expected = expected
        self.actual = actual
        super().__init__(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}")


class SourceChecksumError(ChecksumError):
    """A source file or converted output differs from models.lock; says what was kept and how to retry."""

    def __init__(self, path: str, expected: str, actual: str, hint: str) -> None:
        super().__init__(path, expected, actual)
        self.hint = hint

    def __str__(self) -> str:
        return f"{super().__str__()}; {self.hint}"


class UnsupportedCPUError(ModelError):
    """The installed llama.cpp uses instruction sets this CPU does not have: loading would crash."""


class EngineError(GramLocalError):
    """llama.cpp failed at run time (decode error, out of memory)."""


class ContextAllocationError(EngineError):
    """llama.cpp could not create a context of the size the work needs."""


class BackendError(GramLocalError):
    """A remote backend failed: unreachable, wrong model, a reply that does not follow the protocol."""


class ConversionFailed(GramLocalError):
    """The conversion was valid but failed while running; partial outputs were removed."""


class DownloadError(GramLocalError):
    """A download of benchmark data failed."""


class ServiceBusyError(GramLocalError):
    """The service cannot take the request now (its queue is full, or the model is loading): retry later."""

    def __init__(self, message: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class Cancelled(GramLocalError):
    """A request was cancelled (its client went away, a deadline passed, the process is stopping)."""

    exit_code = EXIT_INTERRUPTED


class DeadlineExceededError(Cancelled):
    """A service request ran past the service's per-request deadline; its work was cancelled."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"the request ran past the deadline of {seconds:g} s and was cancelled")


class ModelStoreWarning(UserWarning):
    """Something the user should know about a model that does not stop the command (unpinned, advisory mismatch)."""
