"""The rollout state machines: one transition table per level, and the only functions that change state.

Per device (one row per device and rollout):

    QUEUED --announce--> SENT --staged--> VERIFIED --active--> ACTIVATED --committed--> HEALTHY
    SENT/VERIFIED --refused--> FAILED         SENT/VERIFIED/ACTIVATED --no verdict within wait--> TIMED_OUT
    SENT/VERIFIED/ACTIVATED --agent rolled back--> ROLLED_BACK
    SENT/VERIFIED/ACTIVATED/HEALTHY/TIMED_OUT --hub sends it back (abort, rollback)--> ROLLED_BACK

An agent may report several steps at once (a status can arrive after the next one), so a status may skip
ahead along the table; a report that would go backwards is refused.  A device that timed out and then
reports late keeps its truth (TIMED_OUT → ACTIVATED/HEALTHY/FAILED/ROLLED_BACK), but the gate that
counted it as a failure is not re-judged.

Per rollout: RUNNING ⇄ PAUSED; RUNNING/PAUSED → COMPLETED | ABORTED | SUPERSEDED; anything but
SUPERSEDED → ROLLED_BACK (an operator's `rollout rollback`, also after completion).
"""

from __future__ import annotations

from cloud_hub.db.rollouts import DeviceRolloutState, Rollout, RolloutDevice, RolloutState
from shared.protocol import ModelState, Status

D = DeviceRolloutState
R = RolloutState

DEVICE_TRANSITIONS: dict[DeviceRolloutState, frozenset[DeviceRolloutState]] = {
    D.QUEUED: frozenset({D.SENT}),
    D.SENT: frozenset({D.VERIFIED, D.ACTIVATED, D.HEALTHY, D.FAILED, D.ROLLED_BACK, D.TIMED_OUT}),
    D.VERIFIED: frozenset({D.ACTIVATED, D.HEALTHY, D.FAILED, D.ROLLED_BACK, D.TIMED_OUT}),
    D.ACTIVATED: frozenset({D.HEALTHY, D.ROLLED_BACK, D.TIMED_OUT}),
    D.HEALTHY: frozenset({D.ROLLED_BACK}),
    D.TIMED_OUT: frozenset({D.ACTIVATED, D.HEALTHY, D.FAILED, D.ROLLED_BACK}),
    D.FAILED: frozenset(),
    D.ROLLED_BACK: frozenset(),
}

ROLLOUT_TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    R.RUNNING: frozenset({R.PAUSED, R.COMPLETED, R.ABORTED, R.ROLLED_BACK, R.SUPERSEDED}),
    R.PAUSED: frozenset({R.RUNNING, R.COMPLETED, R.ABORTED, R.ROLLED_BACK, R.SUPERSEDED}),
    R.COMPLETED: frozenset({R.ROLLED_BACK}),
    R.ABORTED: frozenset({R.ROLLED_BACK}),
    R.ROLLED_BACK: frozenset(),
    R.SUPERSEDED: frozenset(),
}

# Settled for the wave's gate: the device will not change the verdict any more.
SETTLED = frozenset({D.HEALTHY, D.FAILED, D.ROLLED_BACK, D.TIMED_OUT})
# Counted against --max-failure.
FAILURES = frozenset({D.FAILED, D.ROLLED_BACK, D.TIMED_OUT})
# Reached by the new model (or its announcement): a revert must send these back.
REACHED = frozenset({D.SENT, D.VERIFIED, D.ACTIVATED, D.HEALTHY, D.TIMED_OUT})
# Rollouts whose waves still move.
OPEN = frozenset({R.RUNNING, R.PAUSED})


class TransitionError(ValueError):
    """A transition the table does not allow."""


def move_device(row: RolloutDevice, state: DeviceRolloutState, now: float, detail: str = "") -> None:
    """The only place a device's rollout state changes."""
    if state not in DEVICE_TRANSITIONS[row.state]:
        raise TransitionError(f"{row.device_id}: {row.state.value} -> {state.value} is not a valid transition")
    row.state, row.updated_at = state, now
    if detail:
        row.detail = detail[:500]


def move_rollout(rollout: Rollout, state: RolloutState, now: float, reason: str = "") -> None:
    """The only place a rollout's state changes."""
    if state not in ROLLOUT_TRANSITIONS[rollout.state]:
        raise TransitionError(f"rollout {rollout.id}: {rollout.state.value} -> {state.value} is not a valid transition")
    rollout.state, rollout.updated_at = state, now
    if reason:
        rollout.reason = reason[:500]
    if state not in OPEN:
        rollout.finished_at = now


def reported(status: Status, rollout: Rollout) -> tuple[DeviceRolloutState, str] | None:
    """What an agent's status says about its place in ``rollout`` (None: nothing about it)."""
    v = rollout.version
    answers = status.rollout_id in (None, rollout.id)
    ms = status.model_state
    if ms == ModelState.FAILED and status.failed_version == v and answers:
        return D.FAILED, status.error
    if ms == ModelState.ROLLED_BACK and status.failed_version == v and answers:
        return D.ROLLED_BACK, f"agent rolled back: {status.error}"
    if status.model_version == v and ms == ModelState.COMMITTED:
        return D.HEALTHY, ""
    if status.model_version == v and ms == ModelState.ACTIVE:
        return D.ACTIVATED, ""
    if ms == ModelState.STAGED and answers and status.rollout_id == rollout.id:
        return D.VERIFIED, ""
    return None


def apply_report(row: RolloutDevice, status: Status, rollout: Rollout, now: float) -> bool:
    """Move ``row`` to what ``status`` reports if the table allows it; True if it moved."""
    seen = reported(status, rollout)
    if seen is None:
        return False
    state, detail = seen
    if state == row.state or state not in DEVICE_TRANSITIONS[row.state]:
        return False
    move_device(row, state, now, detail)
    return True
