"""What one firmware entry knows, and what it concludes from it.

Plain data and decisions, no Moonraker: the running firmware (from Klipper
or octoflash's last flash), what a build would give, and the resulting
state with the warnings and notes Mainsail and Fluidd show beside it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..versions import (REASON_COMMIT, REASON_LOCAL, REASON_PROFILE, UNKNOWN,
                        FirmwareVersion, UpdateState, update_state)

if TYPE_CHECKING:
    from ..profiles import Profile


@dataclasses.dataclass
class Running:
    """The firmware the board runs, and where that knowledge comes from."""
    version: FirmwareVersion
    source: str = ""          # "klipper", "last_flash" or "" (unknown)
    detail: str = ""          # for the user: which Klipper MCU / when octoflash wrote it
    klipper_object: Optional[str] = None
    flash: Optional[Dict[str, Any]] = None   # octoflash's last flash job of the profile
    # octoflash's newest flash of the profile when it failed, was cancelled or
    # interrupted: the board may hold a partial write
    failed_flash: Optional[Dict[str, Any]] = None


@dataclasses.dataclass
class Pending:
    """What a build of the profile would give now."""
    version: FirmwareVersion
    profile_changed: bool = False
    same_build: Optional[bool] = None    # see versions.update_state
    error: str = ""


@dataclasses.dataclass
class EntryState:
    running: Running
    pending: Pending
    update: UpdateState
    warnings: List[str]
    anomalies: List[str]
    checked: float

    def to_json(self) -> Dict[str, Any]:
        return {
            "state": self.update.state,
            "reason": self.update.reason,
            "running_version": self.running.version.raw,
            "running_source": self.running.source,
            "running_detail": self.running.detail,
            "klipper_object": self.running.klipper_object,
            "pending_version": self.pending.version.raw,
            "profile_changed": self.pending.profile_changed,
            "checked": self.checked,
        }


def assess(profile: Profile, running: Running, pending: Pending,
           klipper_connected: bool) -> EntryState:
    """Decide the entry's state and the messages Mainsail and Fluidd show with it."""
    update = update_state(running.version, pending.version, pending.profile_changed,
                          pending.same_build)
    warnings: List[str] = []
    anomalies: List[str] = []
    section = f"[octoflash {profile.name}]" if profile.source == "config" else \
        f"profile '{profile.name}'"
    if not running.version.orderable:
        if running.failed_flash is not None and not running.version.known:
            warnings.append(failed_flash_warning(running.failed_flash))
        elif running.version.known or running.source:
            warnings.append(
                f"The board's firmware version {running.version.raw!r} cannot be compared "
                "(it was not built from a tagged Klipper git checkout).")
        elif not klipper_connected:
            warnings.append(
                "The firmware on this board is unknown: Klipper is not connected and "
                "octoflash has not written this board yet.")
        elif not running.klipper_object:
            warnings.append(
                "The firmware on this board is unknown: Klipper does not report an MCU for "
                f"this profile; set klipper_mcu in {section} (mcu, or the NAME of [mcu NAME]).")
        else:
            warnings.append(
                f"The firmware on this board is unknown: Klipper does not reach "
                f"'{running.klipper_object}' and octoflash has not written this board yet.")
    if pending.error:
        warnings.append(f"Cannot tell what a build would give: {pending.error}")
    elif not pending.version.orderable:
        warnings.append(
            f"The source checkout's version {pending.version.raw!r} cannot be compared "
            "(it is not a tagged git checkout).")
    if running.source == "last_flash":
        anomalies.append(f"{running.detail}; Klipper does not report this board now.")
    if running.version.dirty:
        anomalies.append(f"The running firmware {running.version.short()} was built from a "
                         "checkout with uncommitted changes.")
    if update.state == "ahead":
        anomalies.append(
            f"The board runs {running.version.short()}, newer than a build of the checkout "
            f"would give ({pending.version.short()}); nothing to update.")
    if update.update_available and not profile.auto_update:
        anomalies.append(
            f"'Update all' leaves this board alone; set 'auto_update: True' in {section} "
            "to include it.")
    return EntryState(running, pending, update, warnings, anomalies, time.time())


def failed_flash_warning(job: Dict[str, Any]) -> str:
    """What the entry says after octoflash's last flash of the board did not finish."""
    state = {"failed": "failed", "cancelled": "was cancelled",
             "interrupted": "was interrupted"}.get(str(job.get("state")), "did not finish")
    detail = str(job.get("error") or job.get("message") or "").strip().splitlines()
    reason = f" ({detail[0][:120]})" if detail else ""
    recovery = str(job.get("recovery") or "").strip()
    steps = f" To recover: {recovery[:300]}" if recovery else ""
    return (f"The firmware on this board is unknown: octoflash's last flash of it {state}"
            f"{reason}, so it may hold a partial write.{steps} Update flashes it again.")


def can_flash_again(state: EntryState) -> bool:
    """Unknown firmware, but a build is possible: Update writes the board again
    (the way forward after a failed or interrupted flash)."""
    return (state.update.state == "unknown" and not state.running.version.known
            and state.pending.version.orderable and not state.pending.error)


def is_conclusive(state: EntryState) -> bool:
    """Is the entry's state sure enough to add or remove an announcement?"""
    if state.update.state == "unknown":
        return False
    # The last flash stands in for a board Klipper knows but does not report now.
    return not (state.running.source == "last_flash" and state.running.klipper_object)


def describe_reason(state: EntryState) -> str:
    """Why an update is offered, in a sentence."""
    u, r, p = state.update, state.running.version, state.pending.version
    if u.state == "behind":
        return f"it runs {r.short()}; a build would give {p.short()}"
    if u.reason == REASON_PROFILE:
        return (f"the profile's settings changed since {r.short()} was written; a build "
                f"would give {p.short()} with the new settings")
    if u.reason == REASON_COMMIT:
        return f"it runs {r.short()}, a build would give {p.short()} (another commit)"
    if u.reason == REASON_LOCAL:
        return (f"it runs {r.short()}; a build would give {p.short()} "
                "(uncommitted changes on one side)")
    return f"it runs {r.short()}; a build would give {p.short()}"


def version_ref(v: FirmwareVersion) -> str:
    """A git reference for the version (commit, else tag) for GitHub links."""
    return v.commit or v.tag_name or UNKNOWN
