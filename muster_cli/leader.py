"""A channel that finds the leading control plane and follows it (docs/ha.md).

`--server a:50051,b:50051` names several control planes sharing one
database. Only the leader takes writes and streams; a follower refuses them
with UNAVAILABLE and names the leader in trailing metadata
(`muster-leader-api`). A refused call did nothing, so this channel sends it
again to the leader; a control plane that cannot be reached is skipped for
the next one; while an election is under way (nobody leads yet) it waits,
up to ELECTION_WAIT seconds. Anything else reaches the caller as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from muster.common.leaders import LEADER_API_KEY, hint_in

ELECTION_WAIT = 20.0
"""How long a call waits for a leader to be elected (a lease is 5 s by default)."""
_UNREACHABLE = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",  # a stopped container's name leaves its network's DNS
    "errors resolving",
)


def leader_hint(err: grpc.RpcError) -> str | None:
    """The leader's API address named by a follower's refusal, if any."""
    return hint_in(err, LEADER_API_KEY)


def _code(err: grpc.RpcError) -> grpc.StatusCode | None:
    try:
        return err.code()
    except Exception:
        return None


def _details(err: grpc.RpcError) -> str:
    try:
        return str(err.details() or "")
    except Exception:
        return ""


class _Attempts:
    """One call's tries: which addresses were unreachable, until when to wait."""

    def __init__(self) -> None:
        self.unreachable: set[str] = set()
        self.give_up = time.monotonic() + ELECTION_WAIT


class LeaderChannel(grpc.Channel):
    """A grpc.Channel over several control plane addresses, talking to the leader."""

    def __init__(self, addresses: list[str], opener: Callable[[str], grpc.Channel]) -> None:
        self.addresses = list(addresses)
        self._open = opener
        self._channels: dict[str, grpc.Channel] = {}
        self.current = self.addresses[0]

    def _channel(self) -> grpc.Channel:
        if self.current not in self._channels:
            self._channels[self.current] = self._open(self.current)
        return self._channels[self.current]

    def _rotate(self) -> None:
        index = self.addresses.index(self.current) if self.current in self.addresses else -1
        self.current = self.addresses[(index + 1) % len(self.addresses)]

    def retry(self, err: grpc.RpcError, attempts: _Attempts) -> bool:
        """Whether the call that failed with `err` may be sent again (having
        moved to the control plane to send it to)."""
        if _code(err) != grpc.StatusCode.UNAVAILABLE or time.monotonic() > attempts.give_up:
            return False
        hint = leader_hint(err)
        details = _details(err)
        if hint:
            if hint not in self.addresses:
                self.addresses.append(hint)
            self.current = hint
            return True
        if "is not the leader" in details:  # an election is under way
            time.sleep(0.5)
            self._rotate()
            return True
        if any(text in details.lower() for text in _UNREACHABLE):
            attempts.unreachable.add(self.current)
            left = [a for a in self.addresses if a not in attempts.unreachable]
            if left:
                self.current = left[0]
                return True
        return False

    def moved_on(self, err: grpc.RpcError) -> None:
        """A stream broke after it had delivered: the caller reconnects by
        itself; point it at the leader named, or at the next address."""
        if _code(err) != grpc.StatusCode.UNAVAILABLE:
            return
        hint = leader_hint(err)
        if hint:
            self.current = hint
        elif len(self.addresses) > 1:
            self._rotate()

    # -- grpc.Channel ------------------------------------------------------

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Unary(self, method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _Streaming(self, method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel().stream_unary(method, *args, **kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel().stream_stream(method, *args, **kwargs)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel().subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel().unsubscribe(callback)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> LeaderChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unary:
    """A unary method that is sent again to the leader when refused."""

    def __init__(self, owner: LeaderChannel, method: str, args: tuple, kwargs: dict) -> None:
        self._owner, self._method, self._args, self._kwargs = owner, method, args, kwargs

    def _callable(self) -> Any:
        return self._owner._channel().unary_unary(self._method, *self._args, **self._kwargs)

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = _Attempts()
        while True:
            try:
                return self._callable()(request, *args, **kwargs)
            except grpc.RpcError as err:
                if not self._owner.retry(err, attempts):
                    raise

    def with_call(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        attempts = _Attempts()
        while True:
            try:
                return self._callable().with_call(request, *args, **kwargs)
            except grpc.RpcError as err:
                if not self._owner.retry(err, attempts):
                    raise

    def future(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        return self._callable().future(request, *args, **kwargs)


class _Streaming:
    """A server-streaming method: a stream refused before its first message
    is opened again at the leader; one that breaks later is the caller's to
    reopen (the channel then points at the leader or the next address)."""

    def __init__(self, owner: LeaderChannel, method: str, args: tuple, kwargs: dict) -> None:
        self._owner, self._method, self._args, self._kwargs = owner, method, args, kwargs

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> _StreamCall:
        def opener() -> Any:
            multi = self._owner._channel().unary_stream(self._method, *self._args, **self._kwargs)
            return multi(request, *args, **kwargs)

        return _StreamCall(self._owner, opener)


class _StreamCall:
    """The iterator a streaming call returns, with the call's other methods."""

    def __init__(self, owner: LeaderChannel, opener: Callable[[], Any]) -> None:
        self._owner = owner
        self._opener = opener
        self._call = opener()
        self._delivered = False
        self._attempts = _Attempts()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._call)
            except grpc.RpcError as err:
                if not self._delivered and self._owner.retry(err, self._attempts):
                    self._call = self._opener()
                    continue
                self._owner.moved_on(err)
                raise
            self._delivered = True
            return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
