"""The octoflash API: HTTP endpoints, JSON-RPC methods and the remote methods macros call.

Every request's arguments are checked here (JSON Schema, the profile
schema's own definitions for names) before the component is asked to do
anything; an ``OctoflashError`` becomes Moonraker's error with the same
status and a one-line message.  Changes over HTTP are guarded against
cross-site requests (``request_guard``).
"""
from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple

from .. import __version__
from ..errors import ConflictError, NotFoundError, OctoflashError, ValidationError, clip_text
from . import request_guard

# The rest (schemas and jsonschema, presets, flash methods, the configurator,
# the job records) is imported by the handlers that use it: registering the
# endpoints at Moonraker's start needs none of it.
if TYPE_CHECKING:
    from moonraker.common import WebRequest

    from ..jobs import Job
    from ..kconfig_menu import KconfigMenus
    from .component import OctoFlash

log = logging.getLogger("octoflash")

_ARTIFACT_ID = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}
MAX_FILE_BYTES = 8 * 1024 * 1024     # a firmware image is far smaller


def _request_schema(properties: Dict[str, Any], required: List[str]) -> Dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


# Request arguments, checked with JSON Schema like profiles are.  Names and
# profile names reuse the profile schema's own definitions.
@functools.cache
def _name_schema() -> Dict[str, Any]:
    from ..schemas import load_schema
    return dict(load_schema("profile")["properties"]["name"])


def _method_enum() -> Dict[str, Any]:
    from ..flash.methods import method_names
    return {"enum": method_names()}


@functools.cache
def _flash_args() -> Dict[str, Any]:
    """A flash request's arguments, from the API and from a macro alike."""
    return _request_schema(
        {"profile": _name_schema(), "build": {"type": "boolean"}, "force": {"type": "boolean"},
         "method": _method_enum(),
         "artifact_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
        ["profile"])


def one_line(text: str) -> str:
    """A message fit for an HTTP reason phrase (one line, printable, no '<')."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    text = clip_text(text.replace("<", "(").replace(">", ")"), 2000)
    return "".join(ch if 32 <= ord(ch) < 127 or 160 <= ord(ch) < 256 else "?" for ch in text)


def as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise ValidationError(f"Argument '{name}' must be true or false, not {value!r}")


def _macro_text(value: Any) -> str:
    """A macro argument as it may appear in a console line (short, one line)."""
    return clip_text(one_line(str(value)), 80)


class OctoflashApi:
    """The endpoints and remote methods of one octoflash component."""

    def __init__(self, component: OctoFlash) -> None:
        self.c = component
        self.server = component.server
        self._menus: Optional[KconfigMenus] = None

    @property
    def menus(self) -> KconfigMenus:
        if self._menus is None:
            from ..kconfig_menu import KconfigMenus
            self._menus = KconfigMenus()
        return self._menus

    async def _remote(self, what: str, call: Callable[[], Awaitable[Optional[Job]]]) -> None:
        try:
            await self.c.ready()
            job = await call()
        except OctoflashError as exc:
            if self.c.console is None:
                log.warning("octoflash: %s refused: %s", what, exc)
                return
            self.c.console.say(f"!! octoflash: {what} refused: {one_line(str(exc))}")
            return
        except Exception as exc:
            log.exception("octoflash: remote method failed")
            self.c.console.say(f"!! octoflash: {what} failed: {exc}")
            return
        if job is None:
            self.c.console.say(f"// octoflash: {what}: every board is up to date")
        else:
            self.c.console.say(f"// octoflash: {what}: job {job.id} started; progress follows here")

    async def _remote_build(self, profile: Any = "", force: Any = False, **_: Any) -> None:
        async def call() -> Job:
            name = self._macro_profile(profile)
            return await self.c.start_build(name, force=as_bool(force, "FORCE"), origin="macro")
        await self._remote(f"build {_macro_text(profile)}".strip(), call)

    async def _remote_flash(self, profile: Any = "", build: Any = True, force: Any = False,
                            flash_method: Any = None, **_: Any) -> None:
        # "flash_method", not "method": Klipper's action_call_remote_method()
        # takes the method's own name as its first argument, "method".
        async def call() -> Job:
            name = self._macro_profile(profile)
            args: Dict[str, Any] = {"profile": name}
            if flash_method:
                args["method"] = flash_method
            _check_args(_flash_args(), args)
            return await self.c.start_flash(name, build=as_bool(build, "BUILD"),
                                          force=as_bool(force, "FORCE"),
                                          method=args.get("method"), origin="macro")
        await self._remote(f"flash {_macro_text(profile)}".strip(), call)

    async def _remote_update_all(self, all: Any = False, **_: Any) -> None:
        await self._remote("update all", lambda: self.c.start_update_all(
            include_current=as_bool(all, "ALL"), origin="macro"))

    @staticmethod
    def _macro_profile(name: Any) -> str:
        """A macro's PROFILE=, checked as the API checks a profile name."""
        if not name:
            raise ValidationError("Give the profile: PROFILE=name")
        text = str(name).strip()
        _check_args(_request_schema({"profile": _name_schema()}, ["profile"]), {"profile": text})
        return text

    def register(self) -> None:
        from moonraker.common import RequestType, TransportType
        get, post, delete = RequestType.GET, RequestType.POST, RequestType.DELETE
        routes: List[Tuple[str, Any, Callable[..., Awaitable[Any]]]] = [
            ("/server/octoflash/presets", get, self._handle_presets_request),
            ("/server/octoflash/profiles", get, self._handle_profiles_request),
            ("/server/octoflash/profile", get | post | delete, self._handle_profile_request),
            ("/server/octoflash/devices", get, self._handle_devices_request),
            ("/server/octoflash/plan", get, self._handle_plan_request),
            ("/server/octoflash/build", post, self._handle_build_request),
            ("/server/octoflash/flash", post, self._handle_flash_request),
            ("/server/octoflash/update_all", post, self._handle_update_all_request),
            ("/server/octoflash/jobs", get, self._handle_jobs_request),
            ("/server/octoflash/job", get, self._handle_job_request),
            ("/server/octoflash/job/cancel", post, self._handle_job_cancel_request),
            ("/server/octoflash/status", get, self._handle_status_request),
            ("/server/octoflash/builds", get, self._handle_builds_request),
            ("/server/octoflash/build/file", get, self._handle_build_file_request),
            ("/server/octoflash/kconfig", get | post, self._handle_kconfig_request),
        ]
        # Changes over HTTP are checked for cross-site requests (request_guard);
        # where that cannot be done, they are offered over the websocket only.
        guarded = request_guard.can_guard(self.server)
        if not guarded:
            self.c.warn("octoflash: this Moonraker's HTTP routes are not the ones octoflash "
                       "knows; profile changes, builds and flashes are accepted over the "
                       "websocket only", "http_guard")
        for path, types, handler in routes:
            changes = bool(types & (post | delete))
            transports = TransportType.all()
            if changes and not guarded:
                transports &= ~TransportType.HTTP
            self.server.register_endpoint(path, types, self._translate_errors(handler),
                                          transports=transports)
            if changes and guarded:
                request_guard.guard_route(self.server, path)

    def _translate_errors(self, handler: Callable[[WebRequest], Awaitable[Any]]
                          ) -> Callable[[WebRequest], Awaitable[Any]]:
        """OctoflashError -> Moonraker error with the same 4xx/5xx code and a one-line message."""
        async def wrapper(web_request: WebRequest) -> Any:
            try:
                await self.c.ready()       # the history read, the parts made
                return await handler(web_request)
            except OctoflashError as exc:
                raise self.server.error(one_line(str(exc)), exc.status) from None
        wrapper.__name__ = handler.__name__
        return wrapper

    @staticmethod
    def _args(web_request: WebRequest, schema: Dict[str, Any], booleans: Tuple[str, ...] = ()
              ) -> Dict[str, Any]:
        """The request's arguments, booleans given as text converted, checked by the schema."""
        args = {k: v for k, v in web_request.get_args().items()}
        for name in booleans:
            if name in args:
                args[name] = as_bool(args[name], name)
        _check_args(schema, args)
        return args

    async def _handle_presets_request(self, web_request: WebRequest) -> Dict[str, Any]:
        from ..klipper_configs import checkout_report
        from ..presets import list_presets
        return {"presets": [p.to_json() for p in list_presets()],
                "from_klipper": await asyncio.to_thread(checkout_report, self.c.settings.klipper_path)}

    async def _handle_profiles_request(self, web_request: WebRequest) -> Dict[str, Any]:
        return {"profiles": [await self.c.describe_profile(p) for p in self.c.profiles.values()],
                "warnings": [w for w in self.c.config_warnings if "[octoflash " in w]}

    async def _handle_profile_request(self, web_request: WebRequest) -> Dict[str, Any]:
        action = web_request.get_action()
        if action == "GET":
            args = self._args(web_request, _request_schema({"name": _name_schema()}, ["name"]))
            return {"profile": await self.c.describe_profile(self.c.get_profile(args["name"]))}
        if action == "DELETE":
            args = self._args(web_request, _request_schema({"name": _name_schema()}, ["name"]))
            return await self.c.delete_profile(args["name"])
        return await self.c.save_profile(web_request.get_args())

    async def _handle_devices_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema({"refresh": {"type": "boolean"}}, []),
                          booleans=("refresh",))
        return {"devices": await self.c.scan_devices(force=bool(args.get("refresh")))}

    async def _handle_plan_request(self, web_request: WebRequest) -> Dict[str, Any]:
        """The plan of a flash; without artifact_id, the build comes first when
        the profile has no current build (as the flash itself does)."""
        from ..flash.plan import plan_with_build
        args = self._args(web_request, _request_schema(
            {"profile": _name_schema(), "method": _method_enum(),
             "artifact_id": _ARTIFACT_ID}, ["profile"]))
        profile = self.c.get_profile(args["profile"])
        options = {"method": args.get("method")}

        async def make(artifact: Any) -> Any:
            return await self.c.pipeline.prepare(profile, artifact, options)
        if args.get("artifact_id"):
            plan = await make(await self.c.find_artifact(profile, args["artifact_id"]))
        else:
            self.c._need_builder()
            plan = await plan_with_build(self.c.builder, profile, make)
        data = plan.to_json()
        return {"plan": data, "artifact": None if plan.needs_build else plan.artifact.to_json(),
                "needs_build": plan.needs_build, "text": plan.format(),
                "build_reason": (f"'{profile.name}' has no build of the current checkout and "
                                 "profile: it is built first, then written."
                                 if plan.needs_build else None)}

    async def _handle_build_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"profile": _name_schema(), "force": {"type": "boolean"}}, ["profile"]), booleans=("force",))
        job = await self.c.start_build(args["profile"], force=bool(args.get("force", False)))
        return {"job": job.to_json()}

    async def _handle_flash_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _flash_args(), booleans=("build", "force"))
        job = await self.c.start_flash(args["profile"], build=bool(args.get("build", True)),
                                     force=bool(args.get("force", False)),
                                     method=args.get("method"),
                                     artifact_id=args.get("artifact_id"))
        return {"job": job.to_json()}

    async def _handle_update_all_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema({"all": {"type": "boolean"}}, []),
                          booleans=("all",))
        job = await self.c.start_update_all(include_current=bool(args.get("all", False)))
        return {"job": job.to_json() if job is not None else None,
                "message": "every board is up to date" if job is None else job.message}

    async def _handle_jobs_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = web_request.get_args()
        limit = args.get("limit")
        if limit is not None:
            try:
                limit = int(limit)
            except (TypeError, ValueError):
                raise ValidationError(f"'limit' must be a number, not {limit!r}") from None
        _check_args(_request_schema({"profile": _name_schema(), "limit": {"type": "integer", "minimum": 1}},
                                    []), dict(args, **({"limit": limit} if limit else {})))
        from .console import add_titles
        jobs = self.c.runner.jobs(profile=args.get("profile"), limit=limit)
        return {"jobs": [add_titles(j.to_json(full=False)) for j in jobs],
                "flash_job": self.c.runner.flash_job.id if self.c.runner.flash_job else None}

    async def _handle_job_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"job_id": {"type": "string", "maxLength": 64}}, ["job_id"]))
        from .console import add_titles
        return {"job": add_titles(self.c.runner.get(args["job_id"]).to_json())}

    async def _handle_job_cancel_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"job_id": {"type": "string", "maxLength": 64}}, ["job_id"]))
        job = await self.c.runner.cancel(args["job_id"])
        return {"job": job.to_json()}

    async def _handle_builds_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema({"profile": _name_schema()}, ["profile"]))
        profile = self.c.get_profile(args["profile"])
        self.c._need_builder()
        assert self.c.builder is not None
        builds = await self.c.builder.artifacts(profile.name)
        return {"profile": profile.name, "builds": [b.to_json() for b in builds]}

    async def _handle_build_file_request(self, web_request: WebRequest) -> Dict[str, Any]:
        args = self._args(web_request, _request_schema(
            {"profile": _name_schema(), "artifact_id": _ARTIFACT_ID,
             "name": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"}},
            ["profile", "artifact_id"]))
        profile = self.c.get_profile(args["profile"])
        artifact = await self.c.find_artifact(profile, args["artifact_id"])
        try:
            record = artifact.file(args.get("name") or None)
        except KeyError:
            names = ", ".join(f.name for f in artifact.files)
            raise NotFoundError(f"Build {artifact.id} of '{profile.name}' has no file "
                                f"'{args.get('name')}'; it has: {names}") from None
        data = await asyncio.to_thread(_read_build_file, artifact.path(record.name), record)
        return {"profile": profile.name, "artifact_id": artifact.id, "name": record.name,
                "size": record.size, "sha256": record.sha256,
                "data": base64.b64encode(data).decode("ascii")}

    async def _handle_kconfig_request(self, web_request: WebRequest) -> Dict[str, Any]:
        """The configurator: GET the menus of a profile's (or preset's) checkout
        with its values; POST a set of values to see them resolved."""
        from ..kconfig_menu import changes, config_symbols, evaluate
        from ..profiles import profile_from_json
        self.c._need_builder()
        builder = self.c.builder
        assert builder is not None
        if web_request.get_action() == "GET":
            args = self._args(web_request, _request_schema(
                {"profile": _name_schema(), "preset": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,80}$"}},
                []))
            if args.get("profile"):
                profile = self.c.get_profile(args["profile"])
            elif args.get("preset"):
                profile = profile_from_json({"name": "new", "preset": args["preset"]})
            else:
                raise ValidationError("Give the profile (profile=NAME) or a preset (preset=ID)")
        else:
            data = dict(web_request.get_args())
            inner = data.get("profile")
            if isinstance(inner, dict):
                data = dict(inner)
            data.setdefault("name", "new")
            # The same checks as a saved profile: the schema (names, safe
            # values), then the checkout's Kconfig (symbol, type, settable).
            profile = profile_from_json(data, source="api")
            await builder.check_kconfig(profile)
        source_dir = builder.checkout(profile.target)
        version = await builder.source_version(profile.target)
        menu = await self.menus.menu(source_dir, (version.describe, version.fingerprint))
        preset_values = dict(profile.preset.kconfig)
        state, base = await asyncio.gather(evaluate(source_dir, profile.kconfig()),
                                           evaluate(source_dir, preset_values))
        return {"profile": profile.name, "preset": profile.preset.id, "target": profile.target, "mcu": profile.mcu,
                "checkout": source_dir, "version": version.describe,
                "entries": menu, "preset_values": preset_values,
                "overrides": dict(profile.kconfig_overrides),
                "visible": state["visible"], "values": state["values"],
                "config": state["config"],
                "changes": changes(config_symbols(base["config"]),
                                   config_symbols(state["config"]))}

    async def _handle_status_request(self, web_request: WebRequest) -> Dict[str, Any]:
        from ..flash.methods import to_json as flash_methods_json
        state, filename = await self.c.klipper.print_state()
        flash_job = self.c.runner.flash_job
        s = self.c.settings
        return {
            "version": __version__,
            "machine": self.c.machine.name,
            "flash_methods": flash_methods_json(),
            "klipper": {
                "connected": bool(self.c.klipper.is_connected()),
                "state": self.c.klipper.state_name(),
                "print_state": state, "print_filename": filename,
                "software_version": self.c.klipper.host_version,
                "service_control": self.c.service.control_problem() is None,
                "service_problem": self.c.service.control_problem(),
            },
            "builds_available": self.c.builder is not None,
            "flash_job": flash_job.id if flash_job is not None else None,
            "active_jobs": [j.to_json(full=False) for j in self.c.runner.active_jobs()],
            "profiles": len(self.c.profiles),
            "warnings": list(self.c.config_warnings),
            "paths": {"klipper_path": s.klipper_path, "katapult_path": s.katapult_path,
                      "build_path": s.build_path, "dfu_util_path": s.dfu_util_path,
                      "flashtool_path": s.flashtool_path},
        }


def _read_build_file(path: str, record: Any) -> bytes:
    """A kept firmware file, only when it is still what its build recorded."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise NotFoundError(f"The build's file {os.path.basename(path)} cannot be read: "
                            f"{exc.strerror or exc}") from None
    import hashlib
    if len(data) > MAX_FILE_BYTES or hashlib.sha256(data).hexdigest() != record.sha256:
        raise ConflictError(f"{os.path.basename(path)} is not the file this build made (its "
                            "sha256 differs); build the profile again")
    return data


def _check_args(schema: Dict[str, Any], args: Dict[str, Any]) -> None:
    """Check request arguments against a JSON Schema; raise ValidationError naming each problem."""
    from ..schemas import validator_for
    validator = validator_for(schema)
    errors = sorted(validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return
    messages = []
    for err in errors:
        where = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "required":
            messages.append(f"{err.message.replace(' is a required property', '')} is required")
        elif err.validator == "pattern" and where in ("name", "profile"):
            messages.append(f"{err.instance!r} is not a valid profile name (letters, digits, "
                            "'_' and '-', starting with a letter or digit, at most 64 characters)")
        elif err.validator == "enum":
            messages.append(f"{where}: {err.instance!r} is not one of "
                            f"{', '.join(map(str, err.validator_value))}")
        else:
            messages.append(f"{where}: {err.message}" if where else err.message)
    raise ValidationError("; ".join(dict.fromkeys(messages)))
