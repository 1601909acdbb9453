"""Resource amounts in canonical units, and what one replica of a codespec asks for."""

from __future__ import annotations

from dataclasses import dataclass

from controlplane.core.codespec import Codespec
from controlplane.core.quantities import cpu_millis, format_cpu, format_memory, memory_bytes


@dataclass(frozen=True, order=True)
class Capacity:
    """CPU in millicores, memory in bytes, whole GPUs."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpus: int = 0

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpus + other.gpus,
        )

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpus - other.gpus,
        )

    def __mul__(self, n: int) -> Capacity:
        return Capacity(self.cpu_millis * n, self.memory_bytes * n, self.gpus * n)

    def fits_in(self, other: Capacity) -> bool:
        """Whether this amount fits inside `other` in every dimension."""
        return (
            self.cpu_millis <= other.cpu_millis
            and self.memory_bytes <= other.memory_bytes
            and self.gpus <= other.gpus
        )

    def describe(self) -> str:
        """Human form, e.g. `cpu 1.5, memory 512Mi, 1 GPU`."""
        text = f"cpu {format_cpu(self.cpu_millis)}, memory {format_memory(self.memory_bytes)}"
        return text + (f", {self.gpus} GPU" + ("s" if self.gpus != 1 else "") if self.gpus else "")


def request_of(spec: Codespec) -> Capacity:
    """What the scheduler reserves for one replica: requests, else limits, else nothing."""
    res = spec.resources
    cpu = res.requests.cpu or res.limits.cpu
    memory = res.requests.memory or res.limits.memory
    return Capacity(
        cpu_millis(cpu) if cpu else 0,
        memory_bytes(memory) if memory else 0,
        res.gpu,
    )


def limit_of(spec: Codespec) -> Capacity:
    """What the runtime enforces on the container (0 means unlimited)."""
    res = spec.resources
    return Capacity(
        cpu_millis(res.limits.cpu) if res.limits.cpu else 0,
        memory_bytes(res.limits.memory) if res.limits.memory else 0,
        res.gpu,
    )
