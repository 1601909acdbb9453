"""The CLI's channel over several control planes moves on from one it cannot
reach, whether the connection is refused or its name no longer resolves (a
stopped container's name leaves its network's DNS)."""

from __future__ import annotations

import grpc

from muster_cli.leader import LeaderChannel, _Attempts


class Refusal(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()


def test_an_unreachable_or_unresolvable_control_plane_is_skipped() -> None:
    for details in (
        "failed to connect to all addresses; last error: UNKNOWN: Connection refused",
        "DNS resolution failed for controlplane-a:50051: C-ares status is not ARES_SUCCESS",
        "failed to connect to all addresses; errors resolving controlplane-a:50051",
    ):
        channel = LeaderChannel(["a:1", "b:2"], lambda address: None)  # type: ignore[arg-type,return-value]
        assert channel.retry(Refusal(details), _Attempts()), details
        assert channel.current == "b:2", details
    other = LeaderChannel(["a:1", "b:2"], lambda address: None)  # type: ignore[arg-type,return-value]
    assert not other.retry(Refusal("the store is unavailable (disk full)"), _Attempts())
    assert other.current == "a:1"
