"""The orchestrator and its agents: registration and reconciliation of what
a node runs, liveness, container reports (stored in groups), node removal."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime
from functools import cached_property, partial

from controlplane.coalescer import Coalescer
from controlplane.core import nodes as maintenance
from controlplane.core import runs as lifecycle
from controlplane.core.errors import (
    AlreadyExists,
    NotFound,
)
from controlplane.core.nodes import Node
from controlplane.core.runs import Action, Run
from controlplane.services.batch import RunBatch
from controlplane.services.orchestrator.links import AgentLink, Report
from controlplane.services.orchestrator.state import OrchestratorState

log = logging.getLogger(__name__)


class AgentsPart(OrchestratorState):
    """Agents connecting, reporting and leaving; nodes removed for good."""

    @cached_property
    def _reports(self) -> Coalescer[tuple[str, Report]]:
        """Reports waiting for the next group commit."""
        return Coalescer(self._handle_reports)

    async def connect(self, node: Node, link: AgentLink, containers: list[Report]) -> None:
        """An agent (re)registered: record it, adopt what it runs, resend what it lacks."""
        await self.cluster()
        now = self._clock()
        async with self._lock:
            known = self._nodes.get(node.name)
            self._refuse_impostor(node, known)
            node = maintenance.keep_maintenance(node, known)  # the admin's, not the agent's
            node.registered_at = known.registered_at if known else now
            node.last_heartbeat, node.status = now, "Ready"
            await self._store.save_node(node)  # first: a failed write changes nothing
            self._put_node(node)
            self._heard[node.name] = self._mono()
            replaced = self._links.get(node.name)
            if replaced is not None and replaced is not link:
                replaced.close()  # the newest connection of a node wins
            self._links[node.name] = link
            try:
                await self._reconcile_node(node.name, link, containers, now)
            except BaseException:
                # The agent's stream ends; it reconnects, and its next Register
                # is reconciled from the start.
                if self._links.get(node.name) is link:
                    del self._links[node.name]
                raise
        log.info("event=agent_connected node=%s containers=%d", node.name, len(containers))
        self.wake()

    def _refuse_impostor(self, node: Node, known: Node | None) -> None:
        """Two live agents must not share a node name: each would report the
        other's containers as missing and fail its runs."""
        heard = self._heard.get(node.name)
        if (
            known is not None
            and node.name in self._links
            and known.instance_id
            and node.instance_id
            and known.instance_id != node.instance_id
            and heard is not None
            and self._mono() - heard < self.settings.liveness.not_ready.total_seconds()
        ):
            raise AlreadyExists(
                f"node name '{node.name}' is in use by another connected agent; give this agent "
                "another --node-name (or stop the other one)"
            )

    async def _reconcile_node(
        self, name: str, link: AgentLink, containers: list[Report], now: datetime
    ) -> None:
        present: set[tuple[int, str, int]] = set()
        batch, leftovers = RunBatch(), set()
        for report in containers:
            obs = report.observation
            run = self._runs.get(report.run_id)
            if run is None:
                leftovers.add(report.run_id)  # finished or unknown run: remove leftovers
                continue
            if obs.generation and obs.generation != run.generation:
                continue  # another placement's container: this replica's own is missing
            present.add((report.run_id, obs.role, obs.index))
            batch.change(run, partial(lifecycle.observe, node=name, obs=obs, now=now), always=True)
        for ended in list(self._ended.values()):  # the node has none of their containers
            if ended.id not in leftovers and lifecycle.has_containers_on(ended, name):
                batch.change(
                    ended, partial(lifecycle.containers_gone, node=name, now=now), always=True
                )

        def catch_up(run: Run) -> list[Action]:
            actions: list[Action] = []
            for r in run.replicas:
                if r.node == name and (run.id, r.role, r.index) not in present:
                    actions += lifecycle.missing_container(run, name, r.role, r.index, now)
            return actions + lifecycle.pending_starts(run, name)

        for run in list(self._runs.values()):
            if any(r.node == name for r in run.replicas):
                batch.change(run, catch_up)
        await self._commit(batch)
        for run_id in sorted(leftovers):
            link.teardown(run_id)

    async def disconnect(self, name: str, link: AgentLink) -> None:
        """The stream ended; liveness decides the node's fate from its heartbeats."""
        async with self._lock:
            if self._links.get(name) is link:
                del self._links[name]
        log.info("event=agent_disconnected node=%s", name)

    def touch(self, name: str) -> None:
        """The node's agent was heard from (any message counts). No lock: liveness
        must never queue behind API work that holds it, or a busy control plane
        would declare healthy nodes Lost."""
        node = self._nodes.get(name)
        if node is not None:
            self._heard[name] = self._mono()
            node.last_heartbeat = self._clock()  # shown by node list; kept in memory

    async def heartbeat(self, name: str) -> None:
        """Record a heartbeat (kept in memory; the node is persisted on status changes)."""
        self.touch(name)
        node = self._nodes.get(name)
        if node is None or node.status == "Ready" or name not in self._links:
            return
        async with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return
            if node.status != "Ready" and name in self._links:
                ready = replace(node, status="Ready", last_heartbeat=self._clock())
                await self._store.save_node(ready)
                self._put_node(ready)
                log.info("event=node_ready node=%s", name)
                self.wake()
            else:
                node.last_heartbeat = self._clock()  # shown by node list; kept in memory

    async def report(self, name: str, report: Report) -> None:
        """A container changed state on node `name`. Reports that arrive while
        others are being stored are decided and stored together (group commit)."""
        await self._reports.submit((name, report))

    async def report_all(self, name: str, reports: list[Report]) -> None:
        """Several reports of node `name`, in the order they happened (a
        busy node sends them in one message)."""
        await self._reports.submit(*((name, report) for report in reports))

    async def _handle_reports(self, reports: list[tuple[str, Report]]) -> None:
        """Decide every report in order, store them all at once, then act.
        A report about a finished run records how its container ended (and a
        container of it still running is removed); one about an unknown run
        only removes the container."""
        async with self._lock:
            batch, now, strays = RunBatch(), self._clock(), []
            for name, report in reports:
                run = self._runs.get(report.run_id)
                if run is None:
                    run = await self._finished_run(report.run_id)
                    if report.observation.state in ("running", "creating"):
                        strays.append((name, report.run_id))
                if run is not None:
                    observe = partial(lifecycle.observe, node=name, obs=report.observation, now=now)
                    batch.change(run, observe, always=True)
            try:
                await self._commit(batch, write_behind=True)
            except KeyError:  # retention deleted a finished run meanwhile: store the others
                for change in batch:
                    try:
                        await self._commit([change])
                    except KeyError:
                        self._ended.pop(change.after.id, None)
            for name, run_id in strays:
                link = self._links.get(name)
                if link is not None:
                    link.teardown(run_id)

    async def _finished_run(self, run_id: int) -> Run | None:
        """A run that has ended: from the recently ended ones kept in memory
        (this control plane stored them and alone writes runs), else the store."""
        run = self._recently_ended(run_id) or await self._store.get_run(run_id)
        return run if run is not None and run.terminal else None

    async def remove_node(self, name: str) -> list[int]:
        """Forget a node for good: fail the runs placed on it (each persisted,
        then its teardowns sent, the node's own last), record the removal
        (which revokes its certificates), cut its stream. Returns the ids of
        the runs that failed. Should a write fail, the node is still there and
        a retry goes on where this one stopped."""
        async with self._lock:
            if name not in self._nodes:
                raise NotFound(f"The node '{name}' was not found; `muster node list` shows them.")
            now, batch = self._clock(), RunBatch()
            for run in list(self._runs.values()):
                batch.change(run, lambda d: lifecycle.node_lost(d, name, now, "was removed"))
            await self._commit(batch)
            failed = [change.after.id for change in batch if change.after.terminal]
            await self._store.delete_node(name, now)
            del self._nodes[name]
            self._nodes_changed()
            self._heard.pop(name, None)
            link = self._links.pop(name, None)
            if link is not None:
                link.close()
        log.warning("event=node_removed node=%s failed_runs=%d", name, len(failed))
        self.wake()
        return failed

    def ready_agents(self, pool: str = "") -> list[tuple[str, AgentLink]]:
        """The Ready, connected nodes (of `pool`; "" for all) and their links, by name."""
        return [
            (name, self._links[name])
            for name, node in sorted(self._nodes.items())
            if node.status == "Ready" and name in self._links and (not pool or pool in node.pools)
        ]

    def agent_of(self, name: str) -> tuple[Node, AgentLink | None]:
        """A known node and its link if it is Ready and connected (NotFound if unknown)."""
        node = self._known(name)
        link = self._links.get(name) if node.status == "Ready" else None
        return node, link

    def knows_node(self, name: str) -> bool:
        """Whether a node of this name has registered and was not removed."""
        return name in self._nodes

    def placed_on(self, name: str, run_id: int, role: str, index: int) -> bool | None:
        """Whether that replica of an active run is placed on node `name`
        (None: the run is not active, ask the store)."""
        run = self._runs.get(run_id)
        if run is None:
            return None
        replica = run.replica(role, index)
        return replica is not None and replica.node == name
