"""Domain errors. The API layer maps each to one gRPC status code, so the
core can say *what* is wrong without knowing about gRPC."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error that is the caller's fault, not the server's."""


class InvalidArgument(DomainError):
    """A request field is malformed. `field` is a dotted path, e.g. `resources.requests.cpu`."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(DomainError):
    """The named resource does not exist."""


class FailedPrecondition(DomainError):
    """The request is well-formed but cannot be carried out in the current state."""


class AlreadyExists(DomainError):
    """The resource to create exists already."""


class ResourceExhausted(DomainError):
    """A limit of the control plane is reached (pending runs, streams); the
    message names the limit and what to do."""


class StoreUnavailable(Exception):
    """The store could not carry out a read or write (disk full, I/O error,
    database locked too long). Not the caller's fault: retry later."""


class Conflict(Exception):
    """A concurrent writer won an optimistic-concurrency race; the caller retries."""


class Unauthenticated(DomainError):
    """The caller presented no credentials, or ones that are not valid."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""
