"""Decoding Podman's JSON without a Podman socket."""

from __future__ import annotations

from agent.podman_attrs import info_from_inspect, info_from_list, podman_state

LABELS = {
    "muster.run-id": "42",
    "muster.role": "worker",
    "muster.replica": "3",
    "muster.node": "n1",
    "muster.hostname": "run-42-worker-3",
    "muster.endpoints": '{"http":8000,"grpc":9000}',
}


def test_inspect_form() -> None:
    attrs = {
        "Name": "muster-run-42-worker-3",
        "Config": {"Labels": LABELS, "Hostname": "ignored"},
        "State": {"Status": "exited", "ExitCode": 137},
        "NetworkSettings": {
            "Networks": {"net": {"IPAddress": "10.89.0.7"}},
            "Ports": {"8000/tcp": [{"HostIp": "", "HostPort": "31000"}], "9000/tcp": None},
        },
    }
    info = info_from_inspect(attrs, "n1", "net")
    assert info is not None
    assert (info.name, info.run_id, info.role, info.replica) == (attrs["Name"], 42, "worker", 3)
    assert (info.state, info.exit_code, info.ip) == ("exited", 137, "10.89.0.7")
    assert info.hostname == "run-42-worker-3"
    assert info.endpoints == {"http": 8000, "grpc": 9000}
    assert info.host_ports == {"http": 31000}
    assert info_from_inspect(attrs, "other-node", "net") is None


def test_list_form_and_malformed_labels() -> None:
    attrs = {
        "Names": ["muster-run-42-worker-3"],
        "Labels": LABELS,
        "State": "running",
        "ExitCode": 0,
        "Ports": [{"host_ip": "", "container_port": 9000, "host_port": 31001, "protocol": "tcp"}],
    }
    info = info_from_list(attrs)
    assert info is not None
    assert (info.state, info.exit_code, info.ip) == ("running", None, None)
    assert info.host_ports == {"grpc": 31001}
    assert info_from_list({**attrs, "Labels": {**LABELS, "muster.role": "boss"}}) is None
    assert info_from_list({**attrs, "Labels": {**LABELS, "muster.run-id": "x"}}) is None
    assert info_from_list({**attrs, "Labels": {**LABELS, "muster.endpoints": "{"}}) is None


def test_state_mapping() -> None:
    assert [podman_state(s) for s in ("created", "running", "stopped", "exited", "dead")] == [
        "creating",
        "running",
        "exited",
        "exited",
        "failed",
    ]
