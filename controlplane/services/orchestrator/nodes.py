"""The orchestrator's nodes: the list with what is in use, cordon, drain
(with monotonic deadlines), and liveness from heartbeat silence."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial

from controlplane.core import nodes as maintenance
from controlplane.core import runs as lifecycle
from controlplane.core.capacity import Capacity
from controlplane.core.nodes import Node
from controlplane.services.batch import RunBatch
from controlplane.services.orchestrator.state import OrchestratorState

log = logging.getLogger(__name__)


class NodesPart(OrchestratorState):
    """The node list, cordon and drain, and node liveness."""

    def nodes(self) -> list[tuple[Node, Capacity, int]]:
        """Every node with what is allocated on it and its replica count."""
        allocated, counts = self._allocations()
        return [
            (n, allocated.get(n.name, Capacity()), counts.get(n.name, 0))
            for n in sorted(self._nodes.values(), key=lambda n: n.name)
        ]

    def _entry(self, node: Node) -> tuple[Node, Capacity, int]:
        """One node as `nodes()` lists it."""
        allocated, counts = self._allocations()
        return node, allocated.get(node.name, Capacity()), counts.get(node.name, 0)

    async def _save_node(self, node: Node) -> Node:
        """Persist a node's new state, then make it the one in force."""
        await self._store.save_node(node)
        self._put_node(node)
        self._schedule_due = True
        return node

    async def cordon_node(self, name: str) -> tuple[Node, Capacity, int]:
        """No new placements on the node; what runs there goes on (a drain too)."""
        async with self._lock:
            node = await self._save_node(maintenance.cordon(self._known(name)))
            entry = self._entry(node)
        log.info("event=node_cordoned node=%s", name)
        return entry

    async def uncordon_node(self, name: str) -> tuple[Node, Capacity, int]:
        """Schedulable again; ends a drain (nothing more is canceled)."""
        async with self._lock:
            node = await self._save_node(maintenance.uncordon(self._known(name)))
            entry = self._entry(node)
        log.info("event=node_uncordoned node=%s", name)
        self.wake()  # pending runs may fit there now
        return entry

    async def drain_node(self, name: str, deadline: timedelta | None) -> tuple[Node, Capacity, int]:
        """Cordon and let the runs with replicas there finish; at `deadline`
        (None: never) the reconcile loop cancels what is left. A node with
        nothing on it is drained at once."""
        async with self._lock:
            now = self._clock()
            node = maintenance.drain(self._known(name), now, deadline)
            if node.drain_deadline is not None and deadline is not None:
                due = self._mono() + deadline.total_seconds()
                self._drain_due[name] = (node.drain_deadline, due)
            _, counts = self._allocations()
            if maintenance.drain_step(node, counts.get(name, 0), now) == "complete":
                node = maintenance.drained(node, now)
            node = await self._save_node(node)
            entry = self._entry(node)
        log.info(
            "event=node_draining node=%s replicas=%d deadline=%s",
            name,
            entry[2],
            node.drain_deadline.isoformat() if node.drain_deadline else "none",
        )
        self.wake()
        return entry

    async def _check_nodes(self, now: datetime) -> None:
        """Liveness from heartbeat silence (monotonic). Every run with a
        replica on a Lost node fails; checked every round, so a failure whose
        write did not go through is retried."""
        mono, lost = self._mono(), set()
        for name in list(self._nodes):
            node, heard = self._nodes[name], self._heard.get(name)
            if heard is None:
                continue
            status = self.settings.liveness.status_after(timedelta(seconds=mono - heard))
            if status != node.status and not (status == "Ready" and node.status == "Lost"):
                node = replace(node, status=status)
                await self._store.save_node(node)
                self._put_node(node)
                self._schedule_due = True
                log.warning("event=node_status node=%s status=%s", name, status)
            if node.status == "Lost":
                lost.add(name)
        if not lost:
            return
        batch = RunBatch()
        for run in list(self._runs.values()):
            for name in sorted(lost & set(run.nodes())):
                if batch.change(run, partial(lifecycle.node_lost, node=name, now=now)).terminal:
                    break
        await self._commit(batch)

    async def _check_drains(self, now: datetime) -> None:
        """Drains: complete those with no replica left; at a drain's deadline,
        cancel the runs still there (each persisted before its teardown goes)."""
        if not any(node.draining for node in self._nodes.values()):
            return
        _, counts = self._allocations()
        for node in list(self._nodes.values()):
            step = maintenance.drain_step(node, counts.get(node.name, 0), self._drain_now(node))
            if step == "deadline":
                batch = RunBatch()
                for run in list(self._runs.values()):
                    batch.change(
                        run, partial(lifecycle.drain_deadline_passed, node=node.name, now=now)
                    )
                await self._commit(batch)
                canceled = sum(1 for change in batch if change.after.terminal)
                log.warning("event=drain_deadline node=%s canceled_runs=%d", node.name, canceled)
                _, counts = self._allocations()
                step = maintenance.drain_step(node, counts.get(node.name, 0), self._drain_now(node))
            if step == "complete":
                await self._save_node(maintenance.drained(node, now))
                log.info("event=node_drained node=%s", node.name)

    def _drain_now(self, node: Node) -> datetime:
        """The instant a drain's deadline is compared with, counted on the
        monotonic clock from when the deadline was set (or first seen after a
        restart), so a wall clock that jumps cancels nothing early or late."""
        if node.drain_deadline is None:
            return self._clock()
        deadline, due = self._drain_due.get(node.name, (None, 0.0))
        if deadline != node.drain_deadline:
            due = self._mono() + (node.drain_deadline - self._clock()).total_seconds()
            self._drain_due[node.name] = (node.drain_deadline, due)
        return node.drain_deadline - timedelta(seconds=max(0.0, due - self._mono()))
