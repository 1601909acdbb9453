"""Agent flags, quantities, port allocation and reconnect backoff."""

from __future__ import annotations

import random
import socket

import psutil
import pytest

from agent.app import make_runtime
from agent.config import parse_args
from agent.connection import Backoff
from agent.ports import PortAllocator, PortsExhausted, parse_port_range, port_is_free
from agent.quantity import parse_cpu_millis, parse_memory_bytes


def test_flags_map_to_config() -> None:
    config = parse_args(
        [
            "--server", "cp:7000",
            "--node-name", "n1",
            "--pool", "cpu", "--pool", "gpu", "--pool", "cpu",
            "--label", "zone=a", "--label", "rack=",
            "--podman-url", "unix:///tmp/p.sock",
            "--network", "net1",
            "--network-mode", "host-port",
            "--advertise-address", "192.0.2.7",
            "--port-range", "31000-31099",
            "--cpus", "1500m",
            "--memory", "4Gi",
            "--gpus", "2",
            "--pids-limit", "512",
            "--container-log-max-size", "20Mi",
            "--log-level", "debug",
        ]
    )  # fmt: skip
    assert config.server == "cp:7000"
    assert config.node_name == "n1"
    assert config.pools == ("cpu", "gpu")
    assert config.labels == {"zone": "a", "rack": ""}
    assert config.podman_url == "unix:///tmp/p.sock"
    assert (config.network, config.network_mode) == ("net1", "host-port")
    assert config.advertise_address == "192.0.2.7"
    assert config.port_range == (31000, 31099)
    assert (config.cpu_millis, config.memory_bytes, config.gpus) == (1500, 4 * 2**30, 2)
    assert config.log_level == "DEBUG"
    assert (config.pids_limit, config.container_log_max_size) == (512, 20 * 2**20)


def test_defaults_come_from_the_machine_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSTER_SERVER", "cp.example:50051")
    config = parse_args([])
    assert config.server == "cp.example:50051"
    assert config.node_name == socket.gethostname()
    assert config.cpu_millis == (psutil.cpu_count() or 1) * 1000
    assert config.memory_bytes == psutil.virtual_memory().total
    assert config.gpus == 0
    assert config.network == "muster" and config.network_mode == "bridge"
    assert config.podman_url == "unix:///run/podman/podman.sock"
    assert config.port_range == (30000, 32767)
    assert config.pools == ()
    assert config.pids_limit == 4096
    assert config.container_log_max_size == 100 * 2**20


@pytest.mark.parametrize(
    ("argv", "pids", "size"),
    [
        (["--pids-limit", "1"], 1, 100 * 2**20),
        (["--container-log-max-size", "16Ki"], 4096, 16 * 2**10),
        (["--container-log-max-size", "1G"], 4096, 10**9),
        (["--container-log-max-size", "1048576"], 4096, 2**20),
    ],
)
def test_container_hardening_flags(argv: list[str], pids: int, size: int) -> None:
    config = parse_args(argv)
    assert (config.pids_limit, config.container_log_max_size) == (pids, size)


async def test_the_runtime_gets_the_hardening_settings() -> None:
    config = parse_args(["--pids-limit", "99", "--container-log-max-size", "5Mi"])
    runtime = make_runtime(config)
    try:
        assert (runtime.pids_limit, runtime.log_max_size) == (99, 5 * 2**20)
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--memory", "4Gx"], "memory '4Gx' has unknown suffix 'Gx'"),
        (["--cpus", "lots"], "cpu 'lots' is not a quantity"),
        (["--cpus", "0"], "cpu '0' must be positive"),
        (["--gpus", "-1"], "gpus '-1' must not be negative"),
        (["--label", "novalue"], "label 'novalue' must look like KEY=VALUE"),
        (["--port-range", "32000-31000"], "1 <= LO <= HI <= 65535"),
        (["--port-range", "abc"], "must look like LO-HI"),
        (["--network-mode", "overlay"], "invalid choice: 'overlay'"),
        (["--node-name", " "], "--node-name must not be empty"),
        (["--pids-limit", "0"], "argument --pids-limit: pids limit '0' must be at least 1"),
        (["--pids-limit", "-5"], "pids limit '-5' must be at least 1"),
        (["--pids-limit", "many"], "pids limit 'many' must be a whole number"),
        (["--pids-limit", "1.5"], "pids limit '1.5' must be a whole number"),
        (
            ["--container-log-max-size", "100Mx"],
            "argument --container-log-max-size: log size '100Mx' has unknown suffix 'Mx'",
        ),
        (["--container-log-max-size", "lots"], "log size 'lots' is not a quantity"),
        (["--container-log-max-size=-1Mi"], "log size '-1Mi' is not a quantity"),
        (["--container-log-max-size", "0"], "log size '0' must be at least 16Ki"),
        (["--container-log-max-size", "1Ki"], "log size '1Ki' must be at least 16Ki"),
    ],
)
def test_bad_flags_exit_2_with_one_clear_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("muster-agent: error: ")
    assert needle in err


@pytest.mark.parametrize(
    ("text", "millis"), [("2", 2000), ("1.5", 1500), ("500m", 500), ("0.25", 250)]
)
def test_cpu_quantities(text: str, millis: int) -> None:
    assert parse_cpu_millis(text) == millis


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), ("4Gi", 4 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1.5Ki", 1536)],
)
def test_memory_quantities(text: str, size: int) -> None:
    assert parse_memory_bytes(text) == size


def test_port_range_parsing() -> None:
    assert parse_port_range("30000-32767") == (30000, 32767)
    assert parse_port_range("80-80") == (80, 80)
    with pytest.raises(ValueError):
        parse_port_range("0-10")


def test_allocator_skips_busy_ports_reserved_ports_and_reuses_released_ones() -> None:
    busy = {31001}
    alloc = PortAllocator(31000, 31004, is_free=lambda p: p not in busy)
    alloc.reserve([31002])
    assert [alloc.allocate(), alloc.allocate(), alloc.allocate()] == [31000, 31003, 31004]
    with pytest.raises(PortsExhausted, match="31000-31004"):
        alloc.allocate()
    alloc.release([31003])
    assert alloc.allocate() == 31003
    assert alloc.allocated == frozenset({31000, 31002, 31003, 31004})


def test_port_is_free_sees_a_listening_socket() -> None:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free("0.0.0.0", port)
        alloc = PortAllocator(port, port, is_free=lambda p: port_is_free("0.0.0.0", p))
        with pytest.raises(PortsExhausted):
            alloc.allocate()


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial=0.2, maximum=5.0)
    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(12)]
    assert 0.1 <= delays[0] <= 0.2
    assert 0.2 <= delays[1] <= 0.4
    assert all(2.5 <= d <= 5.0 for d in delays[6:])
    assert len({round(d, 6) for d in delays[6:]}) > 1, "jittered, not constant"


def test_pipe_dir_defaults_to_the_state_directory() -> None:
    base = ["--node-name", "n", "--insecure", "--cpus", "1", "--memory", "1Gi"]
    assert str(parse_args([*base, "--state-dir", "/s"]).pipes_root) == "/s/pipes"
    assert str(parse_args([*base, "--state-dir", "/s", "--pipe-dir", "/p"]).pipes_root) == "/p"
