"""Announcements (the notification bell of Mainsail and Fluidd) for outdated firmware.

One announcement per profile whose board runs older firmware than a build
would give; it is replaced when the versions change and removed once the
board is up to date.  Moonraker keeps announcements in its database, so
after a restart the ones made earlier are found again (by their feed name)
and reconciled instead of duplicated; one the user dismissed stays
dismissed while its text is unchanged.

Each profile gets its own feed name (``octoflash/<profile>``) because
Moonraker derives an internal announcement's id from its feed and the
current second: two announcements of one feed made within the same second
would share an id, and the first could never be removed again.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, Iterable, List, Optional, Protocol

log = logging.getLogger("octoflash.announcer")

FEED_PREFIX = "octoflash/"


@dataclasses.dataclass(frozen=True)
class Notice:
    title: str
    description: str
    url: str = ""
    priority: str = "normal"     # Mainsail and Fluidd know "normal" and "high"


def feed_for(profile: str) -> str:
    return FEED_PREFIX + profile


class AnnouncementBoard(Protocol):
    """Moonraker's announcements, as ``moonraker_internals.MoonrakerInternals`` reaches them."""

    def announcements_available(self) -> bool: ...

    async def list_announcements(self) -> List[Dict[str, Any]]: ...

    def add_announcement(self, title: str, description: str, url: str, priority: str,
                         feed: str) -> Optional[Dict[str, Any]]: ...

    async def remove_announcement(self, entry_id: str) -> None: ...


class FirmwareAnnouncer:
    """Keeps exactly the wanted notices in Moonraker's announcements."""

    def __init__(self, board: AnnouncementBoard) -> None:
        self.board = board
        self._loaded = False
        self._current: Dict[str, Dict[str, Any]] = {}    # profile -> entry

    async def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for entry in await self.board.list_announcements():
            feed = str(entry.get("feed", ""))
            if entry.get("source") != "internal" or not feed.startswith(FEED_PREFIX):
                continue
            profile = feed[len(FEED_PREFIX):]
            if profile in self._current:
                # A duplicate left by an earlier run: keep the newest only.
                await self._remove_entry(entry)
                continue
            self._current[profile] = entry

    async def sync(self, wanted: Dict[str, Notice], keep: Iterable[str] = ()) -> None:
        """Make the announcements match ``wanted`` (profile -> notice).

        Profiles in ``keep`` (whose state is not known for sure right now)
        keep what they have; all others not in ``wanted`` (up to date, or no
        longer configured) lose their announcement.
        """
        keep = set(keep) - set(wanted)
        if not self.board.announcements_available():
            return
        await self._load()
        for profile, entry in list(self._current.items()):
            notice = wanted.get(profile)
            if profile in keep:
                continue
            if notice is not None and _same(entry, notice):
                continue
            await self._remove_entry(entry)
            del self._current[profile]
        for profile, notice in wanted.items():
            if profile in self._current:
                continue
            added = self.board.add_announcement(notice.title, notice.description, notice.url,
                                                notice.priority, feed_for(profile))
            if added is None:
                continue
            self._current[profile] = added
            log.info("octoflash: announced %s", notice.title)

    async def clear(self) -> None:
        """Remove every octoflash announcement (announcements turned off)."""
        await self.sync({})

    def current(self) -> Dict[str, Dict[str, Any]]:
        return dict(self._current)

    async def _remove_entry(self, entry: Dict[str, Any]) -> None:
        try:
            await self.board.remove_announcement(entry["entry_id"])
        except Exception as exc:   # already gone (removed by hand): nothing to do
            log.debug("octoflash: announcement %s not removed: %s", entry.get("entry_id"), exc)


def _same(entry: Dict[str, Any], notice: Notice) -> bool:
    return (entry.get("title") == notice.title
            and entry.get("description") == notice.description
            and (entry.get("url") or "") == notice.url
            and entry.get("priority") == notice.priority)
