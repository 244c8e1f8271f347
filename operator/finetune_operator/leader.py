"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it.

Why a Lease and not kopf's peering: peering only pauses an operator that sees a higher-priority peer; it
does not fence the paused one, needs kopf's own peering CRD, and two peers of equal priority both keep
acting. A Lease is the standard Kubernetes lock (kube-controller-manager, controller-runtime): one holder,
renewed every few seconds, taken over only after the holder has failed to renew for a whole lease duration,
and every write to it is conditional on its resourceVersion, so two candidates can never both win.

The holder must stop acting before anyone else may take over: a leader that cannot renew within
`renew_deadline` (shorter than the lease duration) exits the process, so a replacement starts as a candidate.
Expiry is judged by this process's own clock since it last saw the record change (not by the holder's
`renewTime`), so clock skew between nodes does not matter.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("finetune_operator.leader")


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _now() -> str:
    """A MicroTime as the apiserver parses it (the client's isoformat drops a zero fraction)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaseLock:
    """One candidate for the Lease `namespace/name`."""

    api: Any  # client.ApiClient
    namespace: str
    name: str
    identity: str = field(default_factory=default_identity)
    lease_seconds: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    _observed: tuple[str | None, Any] | None = None  # (holder, renewTime) last seen
    _observed_at: float = 0.0  # monotonic time it was first seen
    _last_renew: float = 0.0

    @property
    def coordination(self) -> Any:
        return client.CoordinationV1Api(self.api)

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True if this candidate holds the lease afterwards."""
        api = self.coordination
        now = _now()
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.lease_seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                api.create_namespaced_lease(self.namespace, body)
            except ApiException as error2:
                if error2.status == 409:  # another candidate created it first
                    return False
                raise
            self._last_renew = time.monotonic()
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or None
        record = (holder, spec.renew_time)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        duration = spec.lease_duration_seconds or self.lease_seconds
        expired = time.monotonic() - self._observed_at >= duration
        if holder not in (None, self.identity) and not expired:
            return False
        if holder != self.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.identity
        spec.renew_time = now
        spec.lease_duration_seconds = self.lease_seconds
        lease.spec = spec
        try:  # replace carries metadata.resourceVersion: a conditional write
            api.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        self._observed = (self.identity, now)
        self._last_renew = time.monotonic()
        return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until this candidate holds the lease (False if `stop` was set first)."""
        logged = False
        while stop is None or not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}"})
                    return True
            except ApiException as error:
                log.warning("lease %s/%s: %s", self.namespace, self.name, error.reason)
            if not logged:
                log.info(
                    "standing by: another operator holds the lease",
                    extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity},
                )
                logged = True
            time.sleep(self.retry_period)
        return False

    def keep_renewing(self, on_lost: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Renew every retry_period in a daemon thread; call `on_lost` once renewing failed for too long."""

        def run() -> None:
            while not stop.wait(self.retry_period):
                try:
                    if self.try_acquire_or_renew():
                        continue
                    reason = "another candidate holds the lease"  # it expired in someone else's eyes
                except Exception as error:  # e.g. the apiserver is briefly away: retry until the deadline
                    if time.monotonic() - self._last_renew <= self.renew_deadline:
                        continue
                    reason = f"could not renew for {self.renew_deadline:g} s ({error.__class__.__name__})"
                log.error("lost the leader lease: %s", reason, extra={"lease": self.name})
                on_lost()
                return

        thread = threading.Thread(target=run, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the lease up at a clean shutdown, so a successor need not wait for it to expire."""
        api = self.coordination
        try:
            lease = api.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = _now()
            api.replace_namespaced_lease(self.name, self.namespace, lease)
            log.info("released the leader lease", extra={"lease": f"{self.namespace}/{self.name}"})
        except ApiException as error:
            log.warning("could not release the lease: %s", error.reason)
