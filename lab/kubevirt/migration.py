"""Live migration through VirtualMachineInstanceMigration; evacuation through cordon + eviction.

The result's times are the platform's: the VMI's ``status.migrationState`` start and end
timestamps, and the migration object's ``phaseTransitionTimestamps``. A migration that does not
finish within the policy's timeout is cancelled by deleting its migration object.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from virtproof.lab.kubevirt import manifests
from virtproof.lab.kubevirt.resources import MIGRATION_POLICY, VM_LABEL, VMI, VMIM
from virtproof.lab.kubevirt.timeline import MigrationRecord, parse_time
from virtproof.lab.platform import Capability, MigrationPolicy, MigrationResult, PlatformError, require

if TYPE_CHECKING:
    from virtproof.lab.kubevirt.platform import KubeVirtPlatform, KubeVirtVM

log = logging.getLogger("virtproof.lab.kubevirt")

_MODE_CAPS = {"postcopy": Capability.POST_COPY, "auto_converge": Capability.AUTO_CONVERGE}
_MODES = {"PreCopy": "precopy", "PostCopy": "postcopy"}


def _policy_caps(policy: MigrationPolicy) -> list[Capability]:
    caps = [Capability.LIVE_MIGRATION]
    if policy.mode in _MODE_CAPS:
        caps.append(_MODE_CAPS[policy.mode])
    if policy.bandwidth_mibps:
        caps.append(Capability.MIGRATION_BANDWIDTH_LIMIT)
    if policy.downtime_limit_ms:
        caps.append(Capability.MIGRATION_DOWNTIME_LIMIT)
    return caps


def _apply_policy(p: KubeVirtPlatform, vm: KubeVirtVM, policy: MigrationPolicy) -> None:
    body = manifests.migration_policy(p.config.run_id, policy)
    label_value: str | None = None
    if body is not None:
        label_value = body["metadata"]["name"]
        p._dry_run_once(MIGRATION_POLICY, body, None, f"MigrationPolicy {label_value}")
        try:
            p.kube.create(MIGRATION_POLICY, body)
        except ApiException as exc:
            if exc.status != 409:
                raise PlatformError(f"creating MigrationPolicy: {p._api_error(exc)}") from None
    p.kube.conn.limiter.acquire()
    p.kube.custom.patch_namespaced_custom_object(
        VMI.group, VMI.version, p.namespace, VMI.plural, vm.name,
        {"metadata": {"labels": {manifests.POLICY_LABEL: label_value}}},
    )


def _result(vm: KubeVirtVM, source: str, target: str, policy: MigrationPolicy, state: dict[str, Any],
            phases: dict[str, float], requested: float, error: str | None,
            observed_end: float | None = None) -> MigrationResult:
    """From the cluster's records where it has them: ``migrationState`` start and end are
    metav1.Time (the handlers' clocks, whole seconds: ``resolution_s`` 1); the harness's own
    request and completion times (this host's clock) are kept as the observed window."""
    start = parse_time(state.get("startTimestamp"))
    end = parse_time(state.get("endTimestamp"))
    source_kind: Any = "platform"
    resolution = 1.0
    observed_finished = observed_end if observed_end is not None else time.time()
    if start is None or end is None:
        start, end, source_kind, resolution = requested, observed_finished, "harness", 0.0
    # The mode the migration really ran in (migrationState.mode, written by the source
    # virt-handler), not the one asked for: a "post-copy" policy that never reached its
    # completion timeout ran pre-copy.
    mode = _MODES.get(str(state.get("mode") or ""), "unreported")
    if policy.mode == "auto_converge" and mode == "precopy":
        mode = "auto_converge"
    pending = phases.get("Pending")
    ok = bool(state.get("completed")) and not state.get("failed") and error is None
    if not ok and error is None:
        error = str(state.get("failureReason") or "migration failed")
    return MigrationResult(
        vm=vm.name, source=str(state.get("sourceNode") or source), target=str(state.get("targetNode") or target),
        ok=ok, mode=mode, started=start, finished=end, total_s=max(0.0, end - start),
        setup_s=(start - pending) if pending is not None and source_kind == "platform" else None,
        error=error, time_source=source_kind, resolution_s=resolution,
        observed_started=requested, observed_finished=observed_finished,
    )


def migrate(p: KubeVirtPlatform, vm: KubeVirtVM, target: str, policy: MigrationPolicy) -> MigrationResult:
    require(p, *_policy_caps(policy))
    source = vm.record.node
    if target == source:
        raise PlatformError(f"VM {vm.name} already runs on {target}")
    if target not in p.nodes():
        raise PlatformError(f"unknown or unschedulable target node {target!r}")
    _apply_policy(p, vm, policy)
    name = p.next_migration_name(vm.name)
    requested = time.time()
    # Choose the target only where the release can (addedNodeSelector, v1.6+); elsewhere the
    # scheduler picks another node and the result says which.
    chosen = target if p.cluster_facts.features.added_node_selector else None
    try:
        created = p.kube.create(VMIM, manifests.migration(name, vm.name, p.namespace, p.config.run_id, chosen),
                                p.namespace)
    except ApiException as exc:
        raise PlatformError(f"creating migration {name}: {p._api_error(exc)}") from None
    uid = str(created["metadata"].get("uid") or "")
    rec = p.recorder

    def finished() -> bool:
        state = vm.record.migration_state
        if state.get("migrationUid") == uid and bool(state.get("completed") or state.get("failed")):
            return True
        # A migration that fails before the hand-off never writes the VMI's migrationState:
        # its own phase says so (virt-controller watch/migration/migration.go).
        own = rec.migrations.get(name)
        return own is not None and own.phase == "Failed"

    error = None
    done = rec.wait_for(finished, policy.timeout_s)
    observed_end = time.time()
    if not done:
        with rec.cond:
            own = rec.migrations.get(name)
            phase_at_cancel = own.phase if own is not None else None
        cancel(p, name)

        def handed_off() -> bool:
            return vm.record.migration_state.get("migrationUid") == uid

        def settled() -> bool:
            # Deleting a migration before the hand-off to the target (Pending, Scheduling,
            # Scheduled, PreparingTarget) never touches the VMI's migrationState: virt-controller
            # deletes the target pod and drops its finalizer, and the object is gone. Only a
            # handed-off migration is aborted on the VMI (abortRequested, then virt-handler's
            # abortStatus). kubevirt v1.9.0 pkg/virt-controller/watch/migration/migration.go.
            # (Before this, the wait below ran its full 60 s for an abortStatus that never came.)
            own = rec.migrations.get(name)
            if handed_off():
                state = vm.record.migration_state
                return bool(state.get("abortStatus") or state.get("failed") or state.get("completed"))
            return own is None or own.deleted or own.phase == "Failed"

        settled_in_time = rec.wait_for(settled, 60.0)
        with rec.cond:
            if handed_off():
                status = vm.record.migration_state.get("abortStatus") if settled_in_time else "unknown"
                how = f"abortStatus {status}"
            else:  # its phase when deleted (virt-controller then marks it Failed on the way out)
                how = f"deleted in phase {phase_at_cancel or 'unknown'}, before the hand-off"
        error = f"not finished after {policy.timeout_s:.0f} s; cancelled ({how})"
    # the VMI's migrationState and the migration's final phase are separate updates: wait for both
    rec.wait_for(lambda: (name in rec.migrations and rec.migrations[name].phase in ("Succeeded", "Failed"))
                 or (name in rec.migrations and rec.migrations[name].deleted), 5.0)
    with rec.cond:
        state = dict(vm.record.migration_state)
        own = rec.migrations.get(name)
        phases = dict(own.phases) if own is not None else {}
        if state.get("migrationUid") != uid:  # failed before the hand-off: nothing of it on the VMI
            state = {}
            if error is None and own is not None and own.phase == "Failed":
                # virt-controller fails a migration before the hand-off on its own (the target pod
                # gone or down, another migration of the VMI in flight: updateStatus in
                # pkg/virt-controller/watch/migration/migration.go) and says why only in an Event;
                # the object keeps the phase it had reached.
                error = own.failed_before_hand_off("migration")
    return _result(vm, source, target, policy, state, phases, requested, error, observed_end)


def cancel(p: KubeVirtPlatform, name: str) -> None:
    """Cancel a migration the way ``virtctl migrate-cancel`` does: delete its object."""
    p.kube.delete(VMIM, name, p.namespace)


def _cordon(p: KubeVirtPlatform, node: str, on: bool) -> None:
    p.kube.conn.limiter.acquire()
    p.kube.core.patch_node(node, {"spec": {"unschedulable": on}})
    if on:
        p.cordoned.add(node)
    else:
        p.cordoned.discard(node)


def evacuate(p: KubeVirtPlatform, node: str, timeout: float, uncordon_after: bool) -> list[MigrationResult]:
    require(p, Capability.NODE_DRAIN)
    vms = [vm for vm in p.vms.values() if vm.record.node == node]
    before = {vm.name: vm.record.migration_state.get("migrationUid") for vm in vms}
    refused: dict[str, str] = {}  # VMI -> why its eviction was refused without a migration
    requested = time.time()
    _cordon(p, node, True)
    try:
        p.kube.conn.limiter.acquire()
        pods = p.kube.core.list_namespaced_pod(p.namespace, label_selector=f"kubevirt.io=virt-launcher,{p.selector}")
        for pod in pods.items:
            pod_name = str(pod.metadata.name if pod.metadata else "")
            if pod.spec is None or pod.spec.node_name != node:
                continue
            if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
                continue  # a launcher that already ended (the source of an earlier move): nothing runs there
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod_name, namespace=p.namespace))
            p.kube.conn.limiter.acquire()
            try:
                p.kube.core.create_namespaced_pod_eviction(pod_name, p.namespace, body)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                if exc.status != 429:
                    raise PlatformError(f"evicting {pod_name}: {p._api_error(exc)}") from None
                answer = eviction_answer(exc)
                if answer.kind == "target":
                    continue  # the target pod of a move into this node: its VMI is not on this node yet
                if answer.kind != "evacuating":
                    refused[pod_vmi(pod)] = answer.error
            else:
                # Nothing intercepted the eviction (virt-api passes a VMI whose eviction strategy does
                # not call for a migration, e.g. None, or LiveMigrateIfPossible when it cannot move):
                # the API server deleted the pod, so the VMI stops instead of moving.
                refused[pod_vmi(pod)] = (f"evicted without a live migration: virt-api let the eviction of {pod_name} "
                                         "through (the VMI's eviction strategy is not LiveMigrate), so its pod "
                                         "was deleted")

        def moved() -> bool:
            for vm in vms:
                if vm.name in refused:
                    continue
                state = vm.record.migration_state
                if state.get("migrationUid") == before[vm.name]:
                    return False
                if not (state.get("completed") or state.get("failed")):
                    return False
            return True

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            done = p.recorder.wait_for(moved, max(0.0, min(_EVACUATION_POLL_S, left)))
            if done or left <= _EVACUATION_POLL_S:
                break
            waiting = [vm.name for vm in vms if vm.name not in refused]
            refused.update(failed_evacuations(p, waiting, requested))
        results = []
        for vm in vms:
            state = dict(vm.record.migration_state)
            error = None if done else f"evacuation not finished after {timeout:.0f} s"
            if vm.name in refused:
                state, error = {}, refused[vm.name]
            if state.get("migrationUid") == before[vm.name]:
                state = {}
            results.append(_result(vm, node, vm.record.node, MigrationPolicy(), state, {}, requested, error))
        return results
    finally:
        if uncordon_after:
            _cordon(p, node, False)


# virt-controller's evacuation controller makes the evacuation's migrations itself: named
# "kubevirt-evacuation-<random>", the annotation kubevirt.io/evacuationMigration (the node's name)
# and, once the migration controller has seen them, the label kubevirt.io/vmi-name
# (pkg/virt-controller/watch/drain/evacuation/evacuation.go GenerateNewMigration;
# watch/migration/migration.go, MigrationSelectorLabel; KubeVirt v1.9.0). They do not carry the
# run's label, so the platform's informer does not see them: while an evacuation waits, they are
# listed every _EVACUATION_POLL_S seconds, and one that Failed before the hand-off (nothing of it
# on the VMI's migrationState, which would end the wait by itself) ends that VMI's wait with the
# reason. virt-controller would make another after a backoff (20 s, doubling: handleMigrationBackoff);
# a failed attempt is what a drain gate must see, so it is reported, not waited out.
EVACUATION_ANNOTATION = "kubevirt.io/evacuationMigration"
VMI_NAME_LABEL = "kubevirt.io/vmi-name"
_EVACUATION_POLL_S = 2.0


def failed_evacuations(p: KubeVirtPlatform, vmis: list[str], since: float) -> dict[str, str]:
    """VMI -> why: evacuation migrations of these VMIs made since ``since`` (epoch s; the objects'
    creationTimestamp is whole seconds) that Failed before the hand-off."""
    if not vmis:
        return {}
    selector = f"{VMI_NAME_LABEL} in ({','.join(sorted(vmis))})"
    try:
        found = p.kube.list_objects(VMIM, p.namespace, label_selector=selector)
    except ApiException as exc:
        log.warning("listing the evacuation's migrations: %s", p._api_error(exc))
        return {}
    failed: dict[str, str] = {}
    for mig in found:
        meta = mig.get("metadata") or {}
        record = MigrationRecord(str(meta.get("name")), str((mig.get("spec") or {}).get("vmiName") or ""))
        record.update(mig.get("status") or {})
        if EVACUATION_ANNOTATION not in (meta.get("annotations") or {}) or record.phase != "Failed":
            continue
        created = parse_time(meta.get("creationTimestamp"))
        if created is None or created < int(since):
            continue
        vm = p.vms.get(record.vmi)
        handed_off = vm is not None and vm.record.migration_state.get("migrationUid") == meta.get("uid")
        if record.vmi not in vmis or handed_off:
            continue  # handed off: the VMI's migrationState ends the wait, with its own failureReason
        failed[record.vmi] = (f"{record.failed_before_hand_off('evacuation migration')} "
                              "(KubeVirt tries again after a backoff; this is the first attempt's outcome)")
    return failed


@dataclass(frozen=True)
class EvictionAnswer:
    """What a 429 to an eviction meant. ``kind``: ``evacuating`` (KubeVirt took the eviction as the
    start of a live migration), ``target`` (the pod is a migration's target), ``pdb`` (a
    PodDisruptionBudget forbids it: nothing will move), ``refused`` (KubeVirt refused it, e.g.
    the VMI is not live-migratable: nothing will move)."""

    kind: Literal["evacuating", "target", "pdb", "refused"]
    message: str
    error: str


# virt-api's pod-eviction admitter (KubeVirt v1.9.0
# pkg/virt-api/webhooks/validating-webhook/admitters/pod-eviction-admitter.go) denies every
# eviction of a running virt-launcher pod it acts on with code 429, whatever it did: it marked
# the VMI for evacuation ("Eviction triggered evacuation of VMI ..."; "Evacuation in progress:
# ..." when already marked), the pod is a migration target ("Eviction request for target Pod"),
# or it refused ("... is configured with an eviction strategy but is not live-migratable",
# "kubevirt failed ..."). The API server prefixes the message with 'admission webhook "..."
# denied the request: ' (k8s.io/apiserver pkg/admission/plugin/webhook/errors/statuserror.go).
# Admission runs before the eviction REST handler's PodDisruptionBudget check (Kubernetes
# pkg/registry/core/pod/storage/eviction.go: createValidation, then checkAndDecrement), so a PDB
# answers only evictions the webhook let through; its 429 says "Cannot evict pod as it would
# violate the pod's disruption budget." and a details.causes entry whose type (JSON "reason") is
# DisruptionBudget.
_EVACUATING = ("Eviction triggered evacuation of VMI", "Evacuation in progress")
_TARGET = "Eviction request for target Pod"
DISRUPTION_BUDGET_CAUSE = "DisruptionBudget"  # policyv1.DisruptionBudgetCause


def eviction_answer(exc: ApiException) -> EvictionAnswer:
    """Classify a 429 answer to an eviction by its Status body: its message and causes."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or exc.body or exc.reason or "")
    details = body.get("details") if isinstance(body.get("details"), dict) else {}
    causes = [c for c in (details or {}).get("causes") or [] if isinstance(c, dict)]
    # metav1.StatusCause's Type is serialised as "reason" (k8s.io/apimachinery pkg/apis/meta/v1/types.go)
    budget = [str(c.get("message") or "") for c in causes if c.get("reason") == DISRUPTION_BUDGET_CAUSE]
    if budget:
        why = "; ".join(m for m in budget if m) or message
        return EvictionAnswer("pdb", message, f"eviction refused by a PodDisruptionBudget, so nothing moves: {why}")
    if any(marker in message for marker in _EVACUATING):
        return EvictionAnswer("evacuating", message, "")
    if _TARGET in message:
        return EvictionAnswer("target", message, "")
    return EvictionAnswer("refused", message, f"cannot live-migrate: {message}")


def pod_vmi(pod: Any) -> str:
    """The VMI a virt-launcher pod runs (its ``kubevirt.io/domain`` annotation, else the VM label)."""
    meta = pod.metadata
    annotations = (meta.annotations or {}) if meta else {}
    labels = (meta.labels or {}) if meta else {}
    return str(annotations.get("kubevirt.io/domain") or labels.get(VM_LABEL) or "")
