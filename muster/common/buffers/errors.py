"""What can go wrong moving a buffer's bytes, one class per cause, so callers
(the CLI, the agent's copiers) can tell a failed buffer from a bad URL or a
corrupt block and say so in one line."""

from __future__ import annotations


class BufferDataError(Exception):
    """Base of every data-plane and format error."""


class BufferNotFoundError(BufferDataError):
    """The container does not exist (ContainerNotFound)."""

    def __init__(self, message: str = "the buffer does not exist") -> None:
        super().__init__(message)


class BlobNotFoundError(BufferDataError):
    """One blob does not exist (yet) (BlobNotFound)."""


class Md5MismatchError(BufferDataError):
    """A body did not match its Content-MD5."""


class BlobOverwriteError(BufferDataError):
    """A blob already exists; blobs are create-only (UnauthorizedBlobOverwrite)."""


class BufferOverwriteError(BufferDataError):
    """The buffer was already written."""

    def __init__(self, message: str = "buffer cannot be overwritten") -> None:
        super().__init__(message)


class InvalidAccessUrlError(BufferDataError):
    """The access URL is malformed, expired or forged (AuthenticationFailed)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(f"invalid access URL: {reason}" if reason else "invalid access URL")


class PermissionMismatchError(BufferDataError):
    """The URL does not grant this action (AuthorizationPermissionMismatch)."""

    def __init__(self, message: str = "the access url does not allow write access") -> None:
        super().__init__(message)


class ServerBusyError(BufferDataError):
    """HTTP 500 or 503: the data plane is overloaded; retried many times."""


class BufferFailedError(BufferDataError):
    """The writer marked the buffer failed."""

    def __init__(self, message: str = "the buffer is in a permanently failed state") -> None:
        super().__init__(message)


class HashChainMismatchError(BufferDataError):
    """A block's cumulative hash does not follow from the blocks before it."""

    def __init__(self, message: str = "hash chain mismatch") -> None:
        super().__init__(message)


class UnsupportedFormatError(BufferDataError):
    """`.bufferstart` names a format version this code does not read."""
