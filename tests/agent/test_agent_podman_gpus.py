"""CDI GPU devices through the agent's Podman runtime (marker ``podman``).

A fake CDI vendor (tests/fake_cdi.py) declares devices backed by /dev/null;
a container started with one of its names must see that device node and the
variable its spec sets, and no other device of the spec.
"""

from __future__ import annotations

import pytest

from agent.cdi import discover
from agent.runtime import RuntimeFailure
from tests.agent.podman_support import BUSYBOX, PodmanNode, random_run_id, spec, wait_for_state
from tests.agent.test_agent_podman_hardening import read_all
from tests.fake_cdi import CDI_DIR, fake_gpus

pytestmark = pytest.mark.podman

SHOW = "for d in /dev/fakegpu*; do ls -l $d; done; env | grep ^FAKEGPU_ | sort"


async def test_a_container_gets_exactly_its_cdi_device(podman_node: PodmanNode) -> None:
    rt = podman_node.runtime()
    with fake_gpus(2) as gpus:
        assert discover([CDI_DIR]).of_kind(gpus.kind) == gpus.names  # what an agent finds
        job = spec(
            random_run_id(), "job", 0, BUSYBOX, ["sh", "-c"], [SHOW], gpu_devices=(gpus.name(1),)
        )
        await rt.start(job)
        done = await wait_for_state(rt, job.name, "exited")
        lines = [line.text for line in await read_all(rt, job.name)]
    assert done.exit_code == 0, lines
    assert len(lines) == 2, lines
    # A character device with /dev/null's numbers (1, 3), and only device 1.
    assert lines[0].startswith("crw") and lines[0].endswith("/dev/fakegpu1"), lines
    assert "1,   3" in lines[0] or "1, 3" in lines[0], lines
    assert lines[1] == f"FAKEGPU_1={gpus.name(1)}"


async def test_an_unknown_device_fails_the_start_and_leaves_nothing(
    podman_node: PodmanNode,
) -> None:
    rt = podman_node.runtime()
    with fake_gpus(1) as gpus:
        job = spec(random_run_id(), "job", 0, BUSYBOX, ["true"], [], gpu_devices=(gpus.name(5),))
        with pytest.raises(RuntimeFailure, match="unresolvable CDI devices"):
            await rt.start(job)
    assert not await podman_node.exists(job.name)
