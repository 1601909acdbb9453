"""Run containers are started hardened, on the real Podman (marker ``podman``).

Each setting is checked from inside the container (``/proc/self/status``, the
cgroup's ``pids.max``) and from ``podman inspect``. One exception: Podman 4.3's
default capability set already lacks NET_RAW, so from inside a container and
from inspect a dropped ``cap_drop`` looks the same; the test of the create
request catches that instead.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from podman.api.client import APIClient

from agent.podman_create import DEFAULT_LOG_MAX_SIZE, DEFAULT_PIDS_LIMIT, MIN_LOG_MAX_SIZE
from agent.runtime import LogLine
from agent.runtime_podman import PodmanRuntime
from tests.agent.podman_support import (
    BUSYBOX,
    PYTHON,
    PodmanNode,
    random_run_id,
    spec,
    wait_for_state,
    wait_probe,
)

pytestmark = pytest.mark.podman

CAP_NET_RAW = 13
"""Bit of CAP_NET_RAW in the Cap* masks of /proc/PID/status."""
CAP_BITS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_RAW": CAP_NET_RAW,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}
SHOW_SELF = (
    "grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status; "
    # cgroup v2, else v1: the container's own pids controller.
    "echo pids.max: $(cat /sys/fs/cgroup/pids.max 2>/dev/null "
    "|| cat /sys/fs/cgroup/pids/pids.max)"
)


def human_size(size: int) -> str:
    """How Podman's inspect shows a log size (go-units HumanSize: 4 digits, decimal units)."""
    value = float(size)
    units = ["B", "kB", "MB", "GB", "TB"]
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{value:.4g}{units[unit]}"


async def read_all(rt: PodmanRuntime, name: str, within: float = 60.0) -> list[LogLine]:
    """Everything ``follow_logs`` yields until it ends."""
    lines: list[LogLine] = []

    async def run() -> None:
        async for chunk in rt.follow_logs(name):
            lines.extend(chunk)

    await asyncio.wait_for(run(), within)
    return lines


async def status_of_a_job(rt: PodmanRuntime) -> tuple[dict[str, str], str]:
    """Run SHOW_SELF as a job through ``rt``; its ``key: value`` lines, and its name."""
    job = spec(random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], [SHOW_SELF])
    await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    lines = await read_all(rt, job.name)
    assert done.exit_code == 0, [x.text for x in lines]
    fields = {}
    for line in lines:
        key, _, value = line.text.partition(":")
        fields[key] = value.strip()
    return fields, job.name


def mask(names: list[str]) -> int:
    return sum(1 << CAP_BITS[n] for n in names)


def test_default_settings() -> None:
    assert DEFAULT_PIDS_LIMIT == 4096
    assert DEFAULT_LOG_MAX_SIZE == 100 * 2**20
    assert human_size(100 * 2**20) == "104.9MB"  # what Podman 4.3 prints for it
    assert human_size(3_000_000) == "3MB"


async def test_a_run_container_is_hardened_by_default(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    fields, name = await status_of_a_job(rt)
    attrs = await podman_node.inspect(name)

    # no-new-privileges
    assert fields["NoNewPrivs"] == "1"
    assert "no-new-privileges" in attrs["HostConfig"]["SecurityOpt"]
    # Podman's default capabilities minus NET_RAW: what Podman says the process
    # got is exactly what the kernel shows, NET_RAW is in neither, and the
    # default set was not dropped wholesale.
    bounding, effective = int(fields["CapBnd"], 16), int(fields["CapEff"], 16)
    assert not bounding & (1 << CAP_NET_RAW) and not effective & (1 << CAP_NET_RAW)
    assert "CAP_NET_RAW" not in attrs["BoundingCaps"] + attrs["EffectiveCaps"]
    assert bounding == mask(attrs["BoundingCaps"]) and effective == mask(attrs["EffectiveCaps"])
    for cap in ("CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"):
        assert bounding & (1 << CAP_BITS[cap]), cap
    # pids limit (Podman's own default is 2048)
    assert attrs["HostConfig"]["PidsLimit"] == 4096
    assert fields["pids.max"] == "4096"
    # log cap, on the k8s-file driver the log reading relies on
    assert attrs["HostConfig"]["LogConfig"]["Type"] == "k8s-file"
    assert attrs["HostConfig"]["LogConfig"]["Size"] == human_size(DEFAULT_LOG_MAX_SIZE)


async def test_the_pids_limit_and_log_cap_follow_the_settings_and_are_enforced(
    podman_node: PodmanNode,
) -> None:
    rt = podman_node.runtime(pids_limit=16, log_max_size=3_000_000)
    fields, name = await status_of_a_job(rt)
    attrs = await podman_node.inspect(name)
    assert fields["pids.max"] == "16" and attrs["HostConfig"]["PidsLimit"] == 16
    assert attrs["HostConfig"]["LogConfig"]["Size"] == "3MB"

    # The kernel refuses the 17th process (init and python are two of them).
    forker = (
        "import errno, os, signal\n"
        "kids, error = [], 'none'\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            signal.pause()\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "except OSError as exc:\n"
        "    error = errno.errorcode[exc.errno]\n"
        "for pid in kids:\n"
        "    os.kill(pid, signal.SIGKILL)\n"
        "    os.waitpid(pid, 0)\n"
        "print(len(kids), error)\n"
    )
    job = spec(random_run_id(), "job", 1, PYTHON, ["python3", "-c"], [forker])
    await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    lines = [x.text for x in await read_all(rt, job.name)]
    assert done.exit_code == 0, lines
    count, error = lines[-1].split()
    assert error == "EAGAIN" and 0 < int(count) < 16, lines


async def test_the_create_request_asks_for_every_setting(
    podman_node: PodmanNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What podman-py sends to Podman (the only place a dropped cap_drop shows here)."""
    bodies: list[dict[str, Any]] = []
    post = APIClient.post

    def spy(self: APIClient, path: str | bytes, *args: Any, **kwargs: Any) -> Any:
        if path == "/containers/create":
            bodies.append(json.loads(kwargs["data"]))
        return post(self, path, *args, **kwargs)

    monkeypatch.setattr(APIClient, "post", spy)
    rt = podman_node.runtime(pids_limit=321, log_max_size=MIN_LOG_MAX_SIZE)
    await rt.start(spec(random_run_id(), "job", 0, BUSYBOX, ["true"], []))
    (body,) = bodies
    assert body["cap_drop"] == ["CAP_NET_RAW"]
    assert "cap_add" not in body and "privileged" not in body
    assert body["no_new_privileges"] is True
    assert "selinux_opts" not in body, "security_opt is not how no-new-privileges gets there"
    assert body["resource_limits"]["pids"] == {"limit": 321}
    assert body["log_configuration"] == {"driver": "k8s-file", "size": MIN_LOG_MAX_SIZE}


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="pids_limit must be at least 1"):
        PodmanRuntime(node_name="n", pids_limit=0)
    with pytest.raises(ValueError, match="log_max_size must be at least"):
        PodmanRuntime(node_name="n", log_max_size=MIN_LOG_MAX_SIZE - 1)


async def test_every_line_below_the_log_cap_is_read_while_the_job_writes(
    podman_node: PodmanNode,
) -> None:
    # About 0.75 MB of k8s-file log under a 1 MiB cap, in bursts, so that
    # several reads happen while the file grows towards the cap.
    rt = podman_node.runtime(log_max_size=2**20)
    total = 15_000
    program = (
        "import sys, time\n"
        f"for start in range(0, {total}, 3000):\n"
        "    sys.stdout.write(''.join(f'{i}\\n' for i in range(start, start + 3000)))\n"
        "    sys.stdout.flush()\n"
        "    time.sleep(0.3)\n"
    )
    job = spec(random_run_id(), "job", 0, PYTHON, ["python3", "-c"], [program])
    await rt.start(job)
    lines = await read_all(rt, job.name)
    assert [x.text for x in lines] == [str(i) for i in range(total)]
    attrs = await podman_node.inspect(job.name)
    assert attrs["HostConfig"]["LogConfig"]["Size"] == human_size(2**20)


async def test_past_the_log_cap_older_lines_are_lost_but_reading_goes_on(
    podman_node: PodmanNode,
) -> None:
    # About 1 MB of log under a 64 KiB cap: conmon replaces the file again and again.
    # Through the API only the current file is seen (the file reader keeps each file
    # open until it has read it: tests/agent/test_agent_podman_logs.py).
    rt = podman_node.runtime(log_max_size=64 * 2**10, log_files=False)
    total = 20_000
    job = spec(random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], [f"seq 1 {total}"])
    await rt.start(job)
    numbers = [int(x.text) for x in await read_all(rt, job.name)]
    assert numbers, "the lines after the last truncation are still read"
    assert numbers[-1] == total
    assert numbers == sorted(set(numbers)), "in order, none twice"
    assert len(numbers) < total // 4, "the cap really bounds the file"


async def test_a_hardened_worker_serves_http_and_a_job_reaches_it(
    podman_node: PodmanNode,
) -> None:
    """The examples' shape still works: python3 -m http.server, TCP readiness, a job."""
    rt = podman_node.runtime(pids_limit=64)
    await rt.ensure_network()
    run_id = random_run_id()
    worker = spec(
        run_id,
        "worker",
        0,
        PYTHON,
        ["python3"],
        ["-m", "http.server", "8000"],
        working_dir="/tmp",
        endpoints={"http": 8000},
    )
    info = await rt.start(worker)
    await wait_probe(rt, info)
    fetch = (
        "import os, sys, urllib.request\n"
        "url = f\"http://{os.environ['WORKER']}:8000/\"\n"
        "sys.exit(0 if urllib.request.urlopen(url, timeout=10).status == 200 else 5)\n"
    )
    job = spec(
        run_id, "job", 0, PYTHON, ["python3", "-c"], [fetch], env={"WORKER": worker.hostname}
    )
    await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    assert done.exit_code == 0
    failing = spec(run_id, "job", 1, BUSYBOX, ["sh", "-c"], ["echo bye; exit 7"])
    await rt.start(failing)
    assert (await wait_for_state(rt, failing.name, "exited")).exit_code == 7
    assert [x.text for x in await read_all(rt, failing.name)] == ["bye"]


async def test_resources_shm_sizes_dev_shm(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    job = spec(
        random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], ["df -k /dev/shm | tail -n 1"],
        shm_size_bytes=96 * 2**20,
    )  # fmt: skip
    await rt.start(job)
    done = await wait_for_state(rt, job.name, "exited")
    lines = [x.text for x in await read_all(rt, job.name)]
    assert done.exit_code == 0, lines
    assert lines and lines[-1].split()[1] == str(96 * 1024), lines  # 1K-blocks of /dev/shm
    assert (await podman_node.inspect(job.name))["HostConfig"]["ShmSize"] == 96 * 2**20


async def test_restart_always_restarts_a_worker_until_it_is_stopped(
    podman_node: PodmanNode,
) -> None:
    rt = podman_node.runtime()
    await rt.ensure_network()
    worker = spec(
        random_run_id(), "worker", 0, BUSYBOX, ["sh", "-c"], ["sleep 1; exit 3"],
        restart_always=True,
    )  # fmt: skip
    await rt.start(worker)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while (await podman_node.inspect(worker.name))["RestartCount"] < 1:
        assert loop.time() < deadline, "Podman did not restart the exited worker"
        await asyncio.sleep(0.2)
    await rt.stop_run(worker.run_id)  # a stop is final: no restart after it
    stopped = await podman_node.inspect(worker.name)
    assert stopped["State"]["Status"] == "exited"
    count = stopped["RestartCount"]
    end = loop.time() + 3
    while loop.time() < end:
        now = await podman_node.inspect(worker.name)
        assert now["State"]["Status"] == "exited" and now["RestartCount"] == count
        await asyncio.sleep(0.5)
