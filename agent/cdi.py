"""GPU devices from CDI (Container Device Interface) specs, and the ``--gpus`` flag.

A CDI spec file (JSON or YAML, in ``/etc/cdi`` or ``/var/run/cdi``; NVIDIA's
``nvidia-ctk cdi generate`` writes one) declares devices of one *kind*
(``vendor/class``, e.g. ``nvidia.com/gpu``) and what each device adds to a
container (device nodes, variables, mounts). A device is named by its
qualified name ``KIND=NAME`` (``nvidia.com/gpu=0``); Podman resolves such a
name, given as a device of a container, through the same spec files.

The agent reads the specs of its host to know which GPU devices it can offer:

* the pseudo-device ``all`` is not a GPU and is left out;
* two names for the same device nodes (``nvidia-ctk`` can name a GPU by index
  *and* by UUID) count once: the first name in natural order (``0`` before
  ``GPU-...``) is kept;
* a file that cannot be read or parsed is skipped with a warning, as Podman
  skips it.

``--gpus`` then picks what the node offers: nothing given = every discovered
device of the kind; a number = that many of them (the first ones); a comma
list = exactly those devices. A number with no CDI device of the kind keeps
the older behaviour: a count of GPUs with no device behind it (containers get
none), which the agent logs as a warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_KIND = "nvidia.com/gpu"
DEFAULT_SPEC_DIRS: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
"""Where Podman (and so the agent) reads CDI specs; later directories win."""
SPEC_SUFFIXES = (".json", ".yaml")
"""The file names CDI reads (a ``.yml`` file is ignored by Podman, so here too)."""

_VENDOR = r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
_CLASS = r"[A-Za-z](?:[A-Za-z0-9_-]*[A-Za-z0-9])?"
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?"
KIND_RE = re.compile(rf"^{_VENDOR}/{_CLASS}$")
NAME_RE = re.compile(rf"^{_NAME}$")


class CdiError(ValueError):
    """A spec file or a device selection is unusable; ``str()`` says why in one line."""


@dataclass(frozen=True)
class CdiDevice:
    """One device of a spec."""

    kind: str
    name: str
    nodes: tuple[str, ...] = ()
    """Device node paths as the container sees them."""

    @property
    def qualified(self) -> str:
        """``KIND=NAME``, how Podman and muster name the device."""
        return f"{self.kind}={self.name}"


@dataclass
class Discovery:
    """Every device found, by qualified name, and the files that were skipped."""

    devices: dict[str, CdiDevice] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[str]:
        """GPU devices of ``kind`` in natural order (``all`` and aliases left out)."""
        chosen: list[str] = []
        seen: set[tuple[str, ...]] = set()
        mine = [d for d in self.devices.values() if d.kind == kind and d.name != "all"]
        for device in sorted(mine, key=lambda d: natural_key(d.name)):
            identity = device.nodes or (device.qualified,)
            if identity in seen:
                continue  # another name for a device already counted
            seen.add(identity)
            chosen.append(device.qualified)
        return chosen


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders ``gpu2`` before ``gpu10`` (and numbers before words)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"([0-9]+)", text)
        if part
    )


def parse_spec(text: str, source: str = "spec") -> list[CdiDevice]:
    """The devices of one spec file's text (JSON or YAML: YAML reads both)."""
    try:
        doc: Any = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CdiError(f"{source}: not valid JSON or YAML ({first})") from None
    if not isinstance(doc, dict):
        raise CdiError(f"{source}: expected a mapping with cdiVersion, kind and devices")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise CdiError(f"{source}: kind {kind!r} is not VENDOR/CLASS (e.g. nvidia.com/gpu)")
    devices = doc.get("devices")
    if not isinstance(devices, list) or not devices:
        raise CdiError(f"{source}: a spec needs a non-empty list of devices")
    out: list[CdiDevice] = []
    for i, item in enumerate(devices):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise CdiError(f"{source}: devices[{i}] has no valid name ({name!r})")
        edits = item.get("containerEdits") or {}
        nodes = edits.get("deviceNodes") if isinstance(edits, dict) else None
        paths = sorted(
            str(n.get("path"))
            for n in (nodes if isinstance(nodes, list) else [])
            if isinstance(n, dict) and n.get("path")
        )
        out.append(CdiDevice(kind, name, tuple(paths)))
    return out


def discover(dirs: Iterable[Path] = DEFAULT_SPEC_DIRS) -> Discovery:
    """Read every spec file in ``dirs`` (missing directories are fine).

    A device name defined again in a later directory replaces the earlier
    definition, as in CDI, where ``/var/run/cdi`` wins over ``/etc/cdi``.
    """
    found = Discovery()
    for directory in dirs:
        try:
            files = sorted(p for p in Path(directory).iterdir() if p.suffix in SPEC_SUFFIXES)
        except FileNotFoundError:
            continue
        except OSError as exc:
            found.warnings.append(f"cannot list {directory}: {exc.strerror}")
            continue
        for path in files:
            try:
                devices = parse_spec(path.read_text(), str(path))
            except OSError as exc:
                found.warnings.append(f"cannot read {path}: {exc.strerror}")
                continue
            except CdiError as exc:
                found.warnings.append(str(exc))
                continue
            for device in devices:
                found.devices[device.qualified] = device
    return found


@dataclass(frozen=True)
class GpuOffer:
    """What the node offers: a count, and the device names behind it (if any)."""

    count: int = 0
    devices: tuple[str, ...] = ()
    note: str = ""
    """Why the offer is what it is, for the start-up log; '' when plain."""


def _where(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def select_gpus(
    flag: str | None,
    kind: str,
    found: Discovery,
    dirs: Sequence[Path] = DEFAULT_SPEC_DIRS,
) -> GpuOffer:
    """Resolve ``--gpus`` (``None`` when not given) against the discovered devices."""
    if not KIND_RE.match(kind):
        raise CdiError(f"--gpu-cdi-kind '{kind}' is not VENDOR/CLASS (e.g. nvidia.com/gpu)")
    available = found.of_kind(kind)
    text = (flag or "").strip()
    if flag is None:
        return GpuOffer(len(available), tuple(available))
    if text.isdigit():
        count = int(text)
        if count == 0:
            return GpuOffer()
        if not available:
            return GpuOffer(
                count,
                (),
                f"--gpus {count}: no CDI device of kind {kind} in {_where(dirs)}; the node "
                f"offers {count} GPU(s) as a count only and containers get no GPU device",
            )
        if count > len(available):
            raise CdiError(
                f"--gpus {count}: only {len(available)} CDI device(s) of kind {kind} in "
                f"{_where(dirs)} ({', '.join(available)})"
            )
        return GpuOffer(count, tuple(available[:count]))
    if not text:
        raise CdiError("--gpus must be a number or a comma list of CDI device names")
    if re.fullmatch(r"-[0-9]+", text):
        raise CdiError(f"gpus '{text}' must not be negative")
    names: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise CdiError(f"--gpus '{text}': empty device name in the list")
        name = part if "=" in part else f"{kind}={part}"
        device_kind, _, device = name.partition("=")
        if not KIND_RE.match(device_kind) or not NAME_RE.match(device):
            raise CdiError(f"--gpus: '{part}' is not a CDI device name like {kind}=0")
        if name not in found.devices:
            known = ", ".join(sorted(found.devices, key=natural_key)) or "none"
            raise CdiError(f"--gpus: no CDI device '{name}' in {_where(dirs)} (found: {known})")
        if name not in names:
            names.append(name)
    return GpuOffer(len(names), tuple(names))
