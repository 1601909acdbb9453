"""A fake CDI vendor for tests on the real Podman: harmless GPU devices.

Podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi (it has no
setting for another directory), so the spec is a uniquely named file in
/etc/cdi, with a kind of its own (`muster.test/gpu-<random>`), removed when
the test ends, even when it fails. Each device `i` makes `/dev/fakegpuI` in
the container (a character device backed by the host's /dev/null) and sets
`FAKEGPU_I=<device name>`; nothing real is touched. On the multi-host bed
each host has a private /run, so a spec in its /var/run/cdi is seen by that
host's Podman and agent only (tests/multihost/test_gpus.py).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CDI_DIR = Path("/etc/cdi")


@dataclass(frozen=True)
class FakeGpus:
    """The spec written for one test."""

    kind: str
    path: Path
    count: int

    def name(self, i: int) -> str:
        """Qualified CDI name of device `i`."""
        return f"{self.kind}={i}"

    @property
    def names(self) -> list[str]:
        """Every device's qualified name."""
        return [self.name(i) for i in range(self.count)]


def fake_spec(kind: str, count: int, env: Sequence[str] = ()) -> dict:
    """A CDI spec with `count` devices of `kind`; each also sets the variables `env`
    (e.g. which host's spec it came from)."""
    return {
        "cdiVersion": "0.3.0",
        "kind": kind,
        "devices": [
            {
                "name": str(i),
                "containerEdits": {
                    "deviceNodes": [{"hostPath": "/dev/null", "path": f"/dev/fakegpu{i}"}],
                    "env": [f"FAKEGPU_{i}={kind}={i}", *env],
                },
            }
            for i in range(count)
        ],
    }


@contextlib.contextmanager
def fake_gpus(count: int) -> Iterator[FakeGpus]:
    """Write the spec to /etc/cdi for the duration of the block."""
    tag = secrets.token_hex(4)
    kind = f"muster.test/gpu-{tag}"
    made_dir = not CDI_DIR.exists()
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    path = CDI_DIR / f"muster-test-{tag}.json"
    try:
        path.write_text(json.dumps(fake_spec(kind, count)))
        yield FakeGpus(kind, path, count)
    finally:
        path.unlink(missing_ok=True)
        if made_dir:
            with contextlib.suppress(OSError):  # another test's spec may be there now
                CDI_DIR.rmdir()
