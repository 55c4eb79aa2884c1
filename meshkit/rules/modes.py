"""Degradation modes, entered on conditions and left only after 2 consecutive good checks.

    normal       everything is dispatched
    degraded     data-dir disk over 85 %, 3 cycles in a row with database errors, or memory over
                 limits.rss_soft_mb: holds back P3
    emergency    data-dir disk over 95 %: dispatches only P0
    maintenance  an operator's `meshkit mode maintenance`: dispatches nothing new
Running work is never killed by a mode change.
"""

from dataclasses import dataclass

SEVERITY = {"normal": 0, "degraded": 1, "emergency": 2}
GOOD_CHECKS_TO_LEAVE = 2


@dataclass(frozen=True)
class ModeState:
    mode: str = "normal"
    good_streak: int = 0
    reason: str = "all checks good"


def wanted_mode(disk_used_share: float | None, db_errors_in_a_row: int, memory_shed: bool = False) -> tuple:
    """(mode, reason) that the conditions alone call for."""
    if disk_used_share is not None and disk_used_share > 0.95:
        return "emergency", f"data-dir disk {disk_used_share:.0%} full (> 95%)"
    if disk_used_share is not None and disk_used_share > 0.85:
        return "degraded", f"data-dir disk {disk_used_share:.0%} full (> 85%)"
    if db_errors_in_a_row >= 3:
        return "degraded", f"{db_errors_in_a_row} cycles in a row with database errors"
    if memory_shed:
        return "degraded", "memory above limits.rss_soft_mb: holding back low-priority work"
    return "normal", "all checks good"


def next_mode(state: ModeState, wanted: tuple, operator: str | None, operator_reason: str = "") -> ModeState:
    """One check. `operator` is "maintenance" while an operator holds the fleet (with the
    reason they gave, if any)."""
    want, why = wanted
    if operator == "maintenance":
        return ModeState("maintenance", 0, "operator: maintenance" + (f": {operator_reason}" if operator_reason else ""))
    if state.mode == "maintenance":
        return ModeState(want, 0, f"operator ended maintenance; {why}")
    if SEVERITY[want] > SEVERITY[state.mode]:
        return ModeState(want, 0, why)
    if SEVERITY[want] == SEVERITY[state.mode]:
        return ModeState(state.mode, 0, why if want == state.mode else state.reason)
    streak = state.good_streak + 1
    if streak >= GOOD_CHECKS_TO_LEAVE:
        return ModeState(want, 0, f"{why} ({streak} good checks)")
    return ModeState(state.mode, streak, f"{state.reason}; recovering ({streak}/{GOOD_CHECKS_TO_LEAVE} good checks)")
