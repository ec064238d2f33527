"""The profiles: read-only ones from moonraker.conf, the API's in Moonraker's database.

Names are unique regardless of letter case across both; a save or a delete
is done one at a time (each writes the whole list under the ``profiles``
key), so parallel requests never lose a profile.  A profile a job holds
cannot be changed or deleted.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from ..errors import ConflictError, NotFoundError, OctoflashError, UnavailableError, ValidationError
from ..profiles import Profile, name_clash, profile_from_json, profile_from_options
from .api import as_bool, one_line

if TYPE_CHECKING:
    from moonraker.confighelper import ConfigHelper

    from ..build import Builder
    from ..jobs import Job

PROFILES_KEY = "profiles"

Warn = Callable[[str, str], None]


class ProfileStore:
    def __init__(self, db: Any, warn: Warn, holder: Callable[[str], Optional[Job]],
                 builder: Optional[Builder]) -> None:
        self.db = db
        self.warn = warn
        self.holder = holder            # the job holding a profile, if any
        self.builder = builder
        self.config_profiles: Dict[str, Profile] = {}
        self.api_profiles: Dict[str, Profile] = {}
        self._lock = asyncio.Lock()

    @property
    def profiles(self) -> Dict[str, Profile]:
        merged = dict(self.api_profiles)
        merged.update(self.config_profiles)
        return dict(sorted(merged.items()))

    def get(self, name: str, warnings: List[str]) -> Profile:
        profile = self.profiles.get(name)
        if profile is None:
            broken = [w for w in warnings if f"[octoflash {name}]" in w]
            hint = f" Its section has a problem: {broken[0]}" if broken else \
                (f" Known profiles: {', '.join(self.profiles)}." if self.profiles else
                 " No profiles yet: add an [octoflash NAME] section or POST /server/octoflash/profile.")
            raise NotFoundError(f"No profile named '{name}'.{hint}")
        return profile

    # --- loading ------------------------------------------------------------

    def read_config(self, config: ConfigHelper) -> None:
        """The ``[octoflash NAME]`` sections; a broken one is a warning naming it."""
        profiles: Dict[str, Profile] = {}
        for section_name in config.get_prefix_sections("octoflash "):
            section = config.getsection(section_name)
            name = section_name[len("octoflash "):].strip()
            options = {opt: section.get(opt) for opt in section.get_options()}
            other = name_clash(name, profiles)
            if other is not None:
                self.warn(f"[{section_name}]: a profile named '{other}' exists already; "
                          "names that differ only in letter case are not allowed. This "
                          "profile is not loaded; rename the section.", f"profile_{name}")
                continue
            try:
                profiles[name] = profile_from_options(name, options)
            except OctoflashError as exc:
                self.warn(f"[{section_name}]: {one_line(str(exc))}. This profile is not "
                          "loaded; fix the section and restart Moonraker.", f"profile_{name}")
        self.config_profiles = profiles

    async def load(self) -> None:
        """The API's profiles from the database (a moonraker.conf name wins)."""
        stored = await self.db.get(PROFILES_KEY, {}) or {}
        for name, data in stored.items():
            try:
                profile = profile_from_json(data, source="api")
            except OctoflashError as exc:
                self.warn(f"octoflash: profile '{name}' saved through the API cannot be "
                          f"used any more: {one_line(str(exc))}", f"stored_{name}")
                continue
            other = name if name in self.config_profiles else \
                name_clash(name, self.config_profiles)
            if other is not None:
                self.warn(f"octoflash: profile '{name}' saved through the API has the name of "
                          f"[octoflash {other}] in moonraker.conf; the moonraker.conf "
                          "section is used", f"shadow_{name}")
                continue
            self.api_profiles[name] = profile

    async def check_config_profiles(self) -> None:
        """Check moonraker.conf profiles against the checkouts' Kconfig.

        A symbol the checkout does not have, cannot set, or a value that does
        not fit its type is a warning now; a build of that profile is refused
        with the same words before make runs.
        """
        if self.builder is None:
            return
        for name, profile in self.config_profiles.items():
            try:
                await self.builder.check_kconfig(profile)
            except ValidationError as exc:
                self.warn(f"[octoflash {name}]: {one_line(str(exc))}. Builds of this "
                          "profile are refused until it is fixed.", f"kconfig_{name}")
            except OctoflashError:
                continue        # no checkout yet: the build says so

    # --- changes through the API ----------------------------------------------

    async def save(self, args: Dict[str, Any]) -> tuple[Profile, str]:
        """Create or change an API profile; returns it and "created" or "updated"."""
        data = args.get("profile") if isinstance(args.get("profile"), dict) else dict(args)
        assert isinstance(data, dict)
        if isinstance(data.get("auto_update"), str):
            data["auto_update"] = as_bool(data["auto_update"], "auto_update")
        profile = profile_from_json(data, source="api")
        name = profile.name
        if self.builder is not None:
            try:
                await self.builder.check_kconfig(profile)
            except (NotFoundError, UnavailableError):
                pass            # no checkout configured yet: the build checks it
        async with self._lock:
            self._check_writable(name, "change it")
            other = name_clash(name, self.profiles)
            if other is not None:
                raise ConflictError(f"A profile named '{other}' exists already; names that "
                                    "differ only in letter case are not allowed, choose "
                                    "another name")
            action = "updated" if name in self.api_profiles else "created"
            stored = {n: p.to_json() for n, p in self.api_profiles.items()}
            stored[name] = profile.to_json()
            await self.db.insert(PROFILES_KEY, stored)
            self.api_profiles[name] = profile
        return profile, action

    async def delete(self, name: str, warnings: List[str]) -> None:
        async with self._lock:
            if name in self.config_profiles:
                raise ConflictError(
                    f"Profile '{name}' comes from moonraker.conf ([octoflash {name}]) and is "
                    "read-only here; remove the section from the config file")
            if name not in self.api_profiles:
                self.get(name, warnings)   # raises NotFoundError with the known names
            self._check_writable(name, "delete it")
            stored = {n: p.to_json() for n, p in self.api_profiles.items() if n != name}
            await self.db.insert(PROFILES_KEY, stored)
            del self.api_profiles[name]

    def _check_writable(self, name: str, verb: str) -> None:
        if name in self.config_profiles:
            raise ConflictError(f"Profile '{name}' comes from moonraker.conf ([octoflash {name}]) "
                                f"and is read-only here; {verb} in the config file, or choose "
                                "another name")
        holder = self.holder(name)
        if holder is not None:
            raise ConflictError(f"Profile '{name}' is in use by job {holder.id}; {verb} "
                                "when the job has finished")
