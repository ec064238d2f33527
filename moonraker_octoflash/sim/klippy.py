"""A stand-in for Klipper on Moonraker's unix socket.

Moonraker talks to Klipper over a unix socket with JSON messages, each
terminated by the byte ``0x03``.  Moonraker sends requests
``{"id": N, "method": "objects/query", "params": {...}}``; Klipper answers
``{"id": N, "result": {...}}`` or ``{"id": N, "error": {"error":
"WebRequestError", "message": "..."}}`` and pushes messages built from a
``response_template`` the client registered: status updates
(``process_status_update``), console output (``process_gcode_response``) and
remote-method calls (``{"method": NAME, "params": {...}}``).

This stand-in speaks that protocol well enough for Moonraker 0.11 to treat it
as a printer: it answers ``info``, ``list_endpoints``,
``objects/list|query|subscribe``, ``gcode/script``, ``gcode/help``,
``gcode/subscribe_output``, ``pause_resume/*`` and
``register_remote_method``; it reports ``webhooks``, ``print_stats``,
``virtual_sdcard``, ``pause_resume``, ``display_status``, ``configfile`` and
an ``mcu`` object per simulated MCU; and it runs ``[gcode_macro]`` sections
from a Klipper config file with Jinja2 the way Klipper does, so
``action_call_remote_method`` in a macro reaches Moonraker exactly as from
Klipper.  Where the component depends on it, the wording and shapes follow a
real Klipper (tests/test_real_klipper.py compares the two):

* errors raised in a macro's template come back wrapped as Klipper's
  ``TemplateWrapper.render`` wraps them, with its trailing newline;
* ``configfile.settings`` is keyed by lower-cased section and option names
  and holds the defaults Klipper records (``baud``, ``canbus_interface``),
  while ``configfile.config`` and the status objects keep the case written
  in printer.cfg (``mcu Toolhead``);
* an MCU that is not ``reachable`` keeps Klipper in ``startup`` (socket
  open, objects listed, ``{}`` for that MCU, gcode refused with Klipper's
  multi-line message), as after a flash that left a board in its bootloader.

It is used by the tests (print guard, macros) and by the demo, where a
small control socket lets the component stop and start the "Klipper
service" around a flash.
"""
from __future__ import annotations

import argparse
import asyncio
import configparser
import copy
import dataclasses
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
import traceback
from typing import (Any, Callable, Dict, Iterable, List, Optional,
                    Sequence, Union)

log = logging.getLogger("octoflash.sim.klippy")

DEFAULT_VERSION = "v0.13.0-0-g0000000"
# Endpoints a real Klipper with [pause_resume] lists, in its order; Moonraker
# registers each as /printer/<path>.
ENDPOINTS = ["list_endpoints", "info", "emergency_stop", "register_remote_method",
             "gcode/help", "gcode/script", "gcode/restart", "gcode/firmware_restart",
             "gcode/subscribe_output", "objects/list", "objects/query", "objects/subscribe",
             "pause_resume/cancel", "pause_resume/pause", "pause_resume/resume"]
# Klipper's state messages (klippy/klippy.py), word for word: Moonraker shows
# them, and the startup one comes back as the error of every refused gcode.
MESSAGE_READY = "Printer is ready"
MESSAGE_STARTUP = ("\nPrinter is not ready\nThe klippy host software is attempting to "
                   "connect.  Please\nretry in a few moments.\n")
# [mcu] serial ports that Klipper opens without a baud rate (mcu.py)
NO_BAUD_PREFIXES = ("/dev/rpmsg_", "/tmp/klipper_host_")
DEFAULT_BAUD = 250000
DEFAULT_CANBUS_INTERFACE = "can0"


class CommandError(Exception):
    """A gcode or request error, reported to the client as Klipper does."""


@dataclasses.dataclass
class SimMcu:
    """One ``[mcu]`` / ``[mcu NAME]`` section as Klipper reports it."""
    name: str = "mcu"                               # "mcu" or NAME of [mcu NAME], case kept
    # the section's options as written in printer.cfg: serial (and baud) or
    # canbus_uuid (and canbus_interface)
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    version: str = DEFAULT_VERSION                  # mcu_version of the running firmware
    mcu_type: str = "stm32f446xx"
    clock_freq: int = 180000000
    # False: Klipper cannot open the board (no Klipper firmware answers, e.g.
    # it sits in its bootloader after a failed flash); Klipper stays in startup.
    reachable: bool = True

    @property
    def object_name(self) -> str:
        return "mcu" if self.name == "mcu" else f"mcu {self.name}"

    def config_options(self) -> Dict[str, str]:
        """``configfile.config``: the options as written (names lower-cased by configparser)."""
        return {str(k).lower(): str(v) for k, v in self.settings.items()}

    def klipper_settings(self) -> Dict[str, Any]:
        """``configfile.settings``: the options Klipper's mcu.py read, typed, defaults added."""
        options = {str(k).lower(): v for k, v in self.settings.items()}
        if options.get("canbus_uuid") is not None:
            return {"canbus_uuid": str(options["canbus_uuid"]),
                    "canbus_interface": str(options.get("canbus_interface",
                                                        DEFAULT_CANBUS_INTERFACE))}
        if options.get("serial") is None:
            return {}           # real Klipper would refuse such a section; say nothing
        serial = str(options["serial"])
        settings: Dict[str, Any] = {"serial": serial}
        if not serial.startswith(NO_BAUD_PREFIXES):
            settings["baud"] = int(options.get("baud", DEFAULT_BAUD))
            if options.get("restart_method") is not None:
                settings["restart_method"] = str(options["restart_method"])
        return settings

    def status(self) -> Dict[str, Any]:
        return {
            "mcu_version": self.version,
            "mcu_build_versions": "gcc: (15:13.2.rel1-2) 13.2.1 binutils: (2.42-1) 2.42",
            "mcu_constants": {"MCU": self.mcu_type, "CLOCK_FREQ": self.clock_freq,
                              "ADC_MAX": 4095, "STATS_SUMSQ_BASE": 256},
            "last_stats": {"mcu_awake": 0.002, "mcu_task_avg": 1.2e-05,
                           "bytes_retransmit": 0, "bytes_invalid": 0},
        }


McuSource = Callable[[], List[SimMcu]]


@dataclasses.dataclass
class SimMacro:
    """One ``[gcode_macro NAME]`` section."""
    section: str                    # "gcode_macro NAME" as written (the object's name)
    gcode: str
    description: str = "G-Code macro"       # Klipper's default
    options: Dict[str, str] = dataclasses.field(default_factory=dict)   # as written

    @property
    def command(self) -> str:
        """The gcode command: NAME in capitals, as Klipper registers it."""
        return self.section.split(None, 1)[1].upper()


def load_macros(paths: Iterable[str]) -> Dict[str, SimMacro]:
    """``[gcode_macro NAME]`` sections from Klipper config files, by command (NAME in capitals)."""
    macros: Dict[str, SimMacro] = {}
    for path in paths:
        parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=("#", ";"))
        parser.read(path, encoding="utf-8")
        for section in parser.sections():
            parts = section.split()
            if len(parts) == 2 and parts[0] == "gcode_macro" and parser.has_option(section, "gcode"):
                options = dict(parser.items(section))
                macro = SimMacro(section=section, gcode=options["gcode"],
                                 description=options.get("description", "G-Code macro"),
                                 options=options)
                macros[macro.command] = macro
    return macros


class _Client:
    """One connection from Moonraker (it opens one; tools may open more)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.gcode_template: Optional[Dict[str, Any]] = None
        self.subscription: Dict[str, Optional[List[str]]] = {}
        self.status_template: Optional[Dict[str, Any]] = None
        self.last_sent: Dict[str, Dict[str, Any]] = {}

    def send(self, message: Dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self.writer.write(json.dumps(message).encode() + b"\x03")
        except (ConnectionError, RuntimeError):
            self.closed = True


def _fixed_mcus(mcus: List[SimMcu]) -> McuSource:
    def source() -> List[SimMcu]:
        return mcus
    return source


class KlippyStandIn:
    """Klipper's API server side of the unix socket.

    The printer is ready once every MCU is reachable; until then it stays
    in startup, as Klipper does while it retries a board's serial port.
    """

    def __init__(self, socket_path: str, *,
                 mcus: Union[Sequence[SimMcu], McuSource] = (),
                 software_version: str = DEFAULT_VERSION,
                 macro_files: Iterable[str] = (),
                 config_file: str = "",
                 log_file: str = "",
                 klipper_path: str = "",
                 on_start: Optional[Callable[[], None]] = None,
                 on_stop: Optional[Callable[[], None]] = None) -> None:
        self.socket_path = socket_path
        self._mcu_source: McuSource = mcus if callable(mcus) else _fixed_mcus(list(mcus))
        self.software_version = software_version
        self.macro_files = list(macro_files)
        self.config_file = config_file
        self.log_file = log_file
        self.klipper_path = klipper_path or os.path.expanduser("~/klipper")
        self.on_start = on_start      # e.g. the simulated machine learns Klipper runs
        self.on_stop = on_stop
        self.mcus: List[SimMcu] = []
        self.macros: Dict[str, SimMacro] = {}
        self.print_stats: Dict[str, Any] = self._idle_print_stats()
        self.is_paused = False                  # pause_resume.is_paused
        self.identified: List[str] = []         # MCUs Klipper talked to since it started
        self.state = "ready"
        self.state_message = MESSAGE_READY
        self.gcode_history: List[str] = []      # every script received, in order
        self.console: List[str] = []            # every line sent to gcode output
        self.remote_methods: Dict[str, Dict[_Client, Dict[str, Any]]] = {}
        self.starts = 0                         # how many times the service "started"
        self._clients: List[_Client] = []
        self._server: Optional[asyncio.AbstractServer] = None

    # --- service life -------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Open the socket, as Klipper does when its service starts."""
        if self._server is not None:
            return
        if self.on_start is not None:
            self.on_start()
        # Klipper reads its MCUs afresh on every start: a flash shows here.
        self.mcus = list(self._mcu_source())
        self.macros = load_macros(self.macro_files)
        self.print_stats = self._idle_print_stats()
        self.is_paused = False
        self.identified = [m.name for m in self.mcus if m.reachable]
        if len(self.identified) == len(self.mcus):
            self.state, self.state_message = "ready", MESSAGE_READY
        else:
            self.state, self.state_message = "startup", MESSAGE_STARTUP
        os.makedirs(os.path.dirname(os.path.abspath(self.socket_path)), exist_ok=True)
        if os.path.lexists(self.socket_path):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(
            self._serve, path=self.socket_path, limit=20 * 1024 * 1024)
        self.starts += 1
        log.info("Klipper stand-in listening on %s", self.socket_path)

    async def stop(self) -> None:
        """Close the socket and every connection, as a stopped Klipper service does."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
        for client in list(self._clients):
            client.closed = True
            client.writer.close()
        self._clients.clear()
        self.remote_methods.clear()
        if os.path.lexists(self.socket_path):
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        if server is not None and self.on_stop is not None:
            self.on_stop()

    # --- what a test or the demo changes -----------------------------------

    def set_print_state(self, state: str, filename: str = "") -> None:
        """Change ``print_stats`` (standby, printing, paused, complete, cancelled, error)."""
        self.print_stats["state"] = state
        self.is_paused = state == "paused"
        if filename or state in ("standby",):
            self.print_stats["filename"] = filename
        if state == "printing":
            self.print_stats["total_duration"] = self.print_stats.get("total_duration", 0.0) + 1.0
        self._push_status()

    def set_mcu_version(self, name: str, version: str) -> None:
        for mcu in self.mcus:
            if mcu.name == name:
                mcu.version = version
        self._push_status()

    def set_mcu_reachable(self, name: str, reachable: bool = True) -> None:
        """A board answers again (or stops answering) while Klipper runs.

        In startup Klipper keeps retrying: once every MCU answers it
        identifies them and becomes ready.  A ready Klipper that loses a
        board shuts down with its "Lost communication" message.
        """
        mcu = next((m for m in self.mcus if m.name == name), None)
        if mcu is None:
            raise CommandError(f"Unknown mcu '{name}'")
        mcu.reachable = reachable
        if reachable and name not in self.identified:
            self.identified.append(name)
        if self.state == "startup" and all(m.reachable for m in self.mcus):
            self.state, self.state_message = "ready", MESSAGE_READY
        elif self.state == "ready" and not reachable:
            self.state = "shutdown"
            self.state_message = f"Lost communication with MCU '{name}'"
        self._push_status()

    def call_remote_method(self, method: str, **params: Any) -> int:
        """Send a remote-method call as ``webhooks.call_remote_method`` does.

        Returns how many connections received it; raises CommandError like
        Klipper when no client registered the method.
        """
        conns = self.remote_methods.get(method)
        if not conns:
            raise CommandError(f"Remote method '{method}' not registered")
        sent = 0
        for client, template in list(conns.items()):
            if client.closed:
                del conns[client]
                continue
            message: Dict[str, Any] = {"params": params}
            message.update(template)
            client.send(message)
            sent += 1
        if not sent:
            del self.remote_methods[method]
            raise CommandError(f"No active connections for method '{method}'")
        return sent

    def respond_info(self, text: str) -> None:
        lines = [line.strip() for line in text.strip().split("\n")]
        self._respond_raw("// " + "\n// ".join(lines))

    def respond_error(self, text: str) -> None:
        """Klipper's error report: every line as info when there are several, then ``!!`` line 1."""
        lines = text.strip().split("\n")
        if len(lines) > 1:
            self.respond_info("\n".join(lines))
        self._respond_raw("!! " + lines[0].strip())

    async def run_gcode(self, script: str) -> None:
        """Run a gcode script as ``gcode/script`` would (errors raise CommandError)."""
        self.gcode_history.append(script)
        for line in script.split("\n"):
            line = line.strip()
            if line:
                self._run_command(line)

    # --- protocol -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(reader, writer)
        self._clients.append(client)
        try:
            while not client.closed:
                try:
                    data = await reader.readuntil(b"\x03")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                try:
                    request = json.loads(data[:-1])
                except ValueError:
                    log.warning("stand-in: undecodable request %r", data[:200])
                    continue
                response = await self._dispatch(client, request)
                if response is not None:
                    client.send(response)
                    try:
                        await writer.drain()
                    except ConnectionError:
                        break
        finally:
            client.closed = True
            if client in self._clients:
                self._clients.remove(client)
            for conns in self.remote_methods.values():
                conns.pop(client, None)
            try:
                writer.close()
            except Exception:
                pass

    async def _dispatch(self, client: _Client, request: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        req_id = request.get("id")
        method = request.get("method")
        params = request.get("params") or {}
        handler = self._handlers().get(str(method))
        try:
            if handler is None:
                raise CommandError(f"webhooks: No registered callback for path '{method}'")
            result = handler(client, params)
            if asyncio.iscoroutine(result):
                result = await result
        except CommandError as exc:
            if req_id is None:
                return None
            return {"id": req_id, "error": {"error": "WebRequestError", "message": str(exc)}}
        if req_id is None:
            return None
        return {"id": req_id, "result": {} if result is None else result}

    def _handlers(self) -> Dict[str, Callable[[_Client, Dict[str, Any]], Any]]:
        return {
            "info": self._info,
            "list_endpoints": lambda c, p: {"endpoints": list(ENDPOINTS)},
            "emergency_stop": self._estop,
            "register_remote_method": self._register_remote_method,
            "objects/list": lambda c, p: {"objects": list(self._objects())},
            "objects/query": self._query,
            "objects/subscribe": self._subscribe,
            "gcode/script": self._gcode_script,
            "gcode/help": lambda c, p: {m.command: m.description for m in self.macros.values()},
            "gcode/restart": lambda c, p: None,
            "gcode/firmware_restart": lambda c, p: None,
            "gcode/subscribe_output": self._subscribe_output,
            # Klipper's pause_resume runs the same gcode commands
            "pause_resume/pause": lambda c, p: self._run_script_reporting("PAUSE"),
            "pause_resume/resume": lambda c, p: self._run_script_reporting("RESUME"),
            "pause_resume/cancel": lambda c, p: self._run_script_reporting("CANCEL_PRINT"),
        }

    def _info(self, client: _Client, params: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "state": self.state, "state_message": self.state_message,
            "hostname": socket.gethostname(),
            "klipper_path": self.klipper_path,
            "python_path": sys.executable,
            "process_id": os.getpid(), "user_id": os.getuid(), "group_id": os.getgid(),
            "log_file": self.log_file, "config_file": self.config_file,
            "software_version": self.software_version, "cpu_info": "simulated",
        }

    def _estop(self, client: _Client, params: Dict[str, Any]) -> None:
        self.state, self.state_message = "shutdown", "Shutdown due to webhooks request"
        self._push_status()

    def _register_remote_method(self, client: _Client, params: Dict[str, Any]) -> None:
        template = _argument(params, "response_template", (dict,))
        method = _argument(params, "remote_method", (str,))
        self.remote_methods.setdefault(method, {})[client] = template

    def _subscribe_output(self, client: _Client, params: Dict[str, Any]) -> None:
        client.gcode_template = dict(_argument(params, "response_template", (dict,), {}))

    # --- status objects -------------------------------------------------------

    @staticmethod
    def _idle_print_stats() -> Dict[str, Any]:
        return {"filename": "", "total_duration": 0.0, "print_duration": 0.0,
                "filament_used": 0.0, "state": "standby", "message": "",
                "info": {"total_layer": None, "current_layer": None}}

    def _objects(self) -> Dict[str, Dict[str, Any]]:
        objects: Dict[str, Dict[str, Any]] = {
            "webhooks": {"state": self.state, "state_message": self.state_message},
            "configfile": self._configfile(),
        }
        for mcu in self.mcus:
            # an MCU Klipper has not identified has no status yet
            objects[mcu.object_name] = mcu.status() if mcu.name in self.identified else {}
        objects.update({
            "print_stats": copy.deepcopy(self.print_stats),
            # the three Moonraker asks for ([virtual_sdcard], [pause_resume], [display_status])
            "virtual_sdcard": {"file_path": self.print_stats["filename"] or None,
                               "progress": 0.0, "is_active": self.print_stats["state"] == "printing",
                               "file_position": 0, "file_size": 0},
            "pause_resume": {"is_paused": self.is_paused},
            "display_status": {"progress": 0.0, "message": None},
        })
        for macro in self.macros.values():
            objects[macro.section] = {}
        return objects

    def _sdcard_path(self) -> Optional[str]:
        """[virtual_sdcard] path: the gcodes folder beside the config folder, when it exists."""
        if not self.config_file:
            return None
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(self.config_file))),
                            "gcodes")
        return path if os.path.isdir(path) else None

    def _configfile(self) -> Dict[str, Any]:
        """``config`` keeps section names as written; ``settings`` has them lower-cased, as Klipper."""
        config: Dict[str, Dict[str, Any]] = {}
        settings: Dict[str, Dict[str, Any]] = {}
        for mcu in self.mcus:
            config[mcu.object_name] = mcu.config_options()
            settings[mcu.object_name.lower()] = mcu.klipper_settings()
        sdcard_path = self._sdcard_path()
        config["virtual_sdcard"] = {"path": sdcard_path} if sdcard_path else {}
        config["pause_resume"] = {}
        config["display_status"] = {}
        if sdcard_path:
            settings["virtual_sdcard"] = {"path": sdcard_path}
        settings["pause_resume"] = {"recover_velocity": 50.0}
        for macro in self.macros.values():
            config[macro.section] = dict(macro.options)
            settings[macro.section.lower()] = {"gcode": macro.gcode,
                                               "description": macro.description}
        return {"settings": settings, "config": config, "warnings": [],
                "save_config_pending": False, "save_config_pending_items": {}}

    def _status_for(self, wanted: Dict[str, Optional[List[str]]]) -> Dict[str, Dict[str, Any]]:
        objects = self._objects()
        status: Dict[str, Dict[str, Any]] = {}
        for name, fields in wanted.items():
            obj = objects.get(name, {})
            status[name] = dict(obj) if fields is None else {f: obj.get(f) for f in fields}
        return status

    def _check_objects_arg(self, params: Dict[str, Any]) -> Dict[str, Optional[List[str]]]:
        objects: Dict[str, Any] = _argument(params, "objects", (dict,))
        for key, value in objects.items():
            if value is not None and not (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value)):
                raise CommandError("Invalid argument")
        return objects

    def _query(self, client: _Client, params: Dict[str, Any]) -> Dict[str, Any]:
        objects = self._check_objects_arg(params)
        return {"eventtime": time.monotonic(), "status": self._status_for(objects)}

    def _subscribe(self, client: _Client, params: Dict[str, Any]) -> Dict[str, Any]:
        objects = self._check_objects_arg(params)
        status = self._status_for(objects)
        client.subscription = {k: (list(v) if v is not None else None) for k, v in objects.items()}
        client.status_template = dict(_argument(params, "response_template", (dict,), {}))
        client.last_sent = copy.deepcopy(status)
        return {"eventtime": time.monotonic(), "status": status}

    def _push_status(self) -> None:
        """Send changed fields to subscribers, as Klipper's 250 ms query timer does."""
        for client in list(self._clients):
            if client.status_template is None or not client.subscription:
                continue
            current = self._status_for(client.subscription)
            diff: Dict[str, Dict[str, Any]] = {}
            for name, fields in current.items():
                before = client.last_sent.get(name, {})
                changed = {k: v for k, v in fields.items() if before.get(k) != v}
                if changed:
                    diff[name] = changed
            if not diff:
                continue
            client.last_sent = copy.deepcopy(current)
            message = dict(client.status_template)
            message["params"] = {"eventtime": time.monotonic(), "status": diff}
            client.send(message)

    # --- gcode ----------------------------------------------------------------

    def _respond_raw(self, text: str) -> None:
        self.console.append(text)
        for client in list(self._clients):
            if client.gcode_template is not None:
                message = dict(client.gcode_template)
                message["params"] = {"response": text}
                client.send(message)

    async def _gcode_script(self, client: _Client, params: Dict[str, Any]) -> None:
        await self._run_script_reporting(_argument(params, "script", (str,)))

    async def _run_script_reporting(self, script: str) -> None:
        """Run a script for a request; an error goes to the console too, as in Klipper."""
        try:
            await self.run_gcode(script)
        except CommandError as exc:
            self.respond_error(str(exc))
            raise

    def _run_command(self, line: str) -> None:
        parts = line.split(None, 1)
        command = parts[0].upper()
        raw_params = parts[1] if len(parts) > 1 else ""
        if command in ("M105", "M21"):
            return      # Klipper answers these quietly, ready or not
        if command == "STATUS":
            if self.state != "ready":
                raise CommandError(self.state_message.rstrip() + "\nKlipper state: Not ready")
            self.respond_info("Klipper state: Ready")
            return
        if self.state != "ready":
            # only Klipper's base commands exist before ready; macros too are refused
            raise CommandError(self.state_message)
        if command in self.macros:
            self._run_macro(command, raw_params)
        elif command in ("PAUSE", "RESUME", "CANCEL_PRINT"):
            self._pause_resume(command)
        elif command in ("M117", "M118", "RESPOND"):
            self.respond_info(raw_params)
        elif command in ("G28", "G1", "G0", "G4", "M104", "M140", "M400", "M115"):
            pass
        else:
            self.respond_info(f'Unknown command:"{command}"')

    def _pause_resume(self, command: str) -> None:
        """What Klipper's [pause_resume] does to a print from the virtual SD card."""
        state = self.print_stats["state"]
        if command == "PAUSE":
            if self.is_paused:
                self.respond_info("Print already paused")
                return
            self.is_paused = True
            if state == "printing":
                self.print_stats["state"] = "paused"
        elif command == "RESUME":
            if not self.is_paused:
                self.respond_info("Print is not paused, resume aborted")
                return
            self.is_paused = False
            if state == "paused":
                self.print_stats["state"] = "printing"
        else:
            self.is_paused = False
            if state in ("printing", "paused"):
                self.print_stats["state"] = "cancelled"
            else:
                self.respond_info("action:cancel")
        self._push_status()

    def _run_macro(self, name: str, raw_params: str) -> None:
        import jinja2   # Klipper's template engine; installed with Moonraker
        lexer = shlex.shlex(raw_params, posix=True)
        lexer.whitespace_split = True
        lexer.commenters = "#;"
        try:
            params = {k.upper(): v for k, v in (arg.split("=", 1) for arg in lexer)}
        except ValueError:
            raise CommandError(f"Malformed command '{name} {raw_params}'") from None
        env = jinja2.Environment("{%", "%}", "{", "}")
        macro = self.macros[name]

        def raise_error(msg: str) -> str:
            raise _KlipperCommandError(msg)

        def call_remote_method(method: str, **kwargs: Any) -> str:
            try:
                self.call_remote_method(method, **kwargs)
            except CommandError:
                log.exception("Remote Call Error")
            return ""

        def respond_info(msg: str) -> str:
            self.respond_info(msg)
            return ""

        def emergency_stop(msg: str = "") -> str:
            self._estop(None, {})  # type: ignore[arg-type]
            return ""

        context = {
            "params": params, "rawparams": raw_params,
            "printer": self._objects(),
            "action_respond_info": respond_info,
            "action_raise_error": raise_error,
            "action_call_remote_method": call_remote_method,
            "action_emergency_stop": emergency_stop,
        }
        try:
            rendered = str(env.from_string(macro.gcode).render(context))
        except Exception as exc:
            # Klipper's TemplateWrapper.render wraps every error of the
            # template, action_raise_error included, in one message ending
            # in a newline (the last line of format_exception_only).
            raise CommandError(f"Error evaluating '{macro.section}:gcode': "
                               f"{_exception_line(exc)}") from None
        for line in rendered.split("\n"):
            line = line.strip()
            if line:
                self._run_command(line)


class _KlipperCommandError(CommandError):
    """``action_raise_error`` in a macro: Klipper's gcode.CommandError."""


def _exception_line(exc: BaseException) -> str:
    """The line Python's ``format_exception_only`` ends with, Klipper's classes named as in Klipper."""
    if isinstance(exc, _KlipperCommandError):
        return f"gcode.CommandError: {exc}\n"
    return traceback.format_exception_only(type(exc), exc)[-1]


_MISSING = object()


def _argument(params: Dict[str, Any], item: str, types: Sequence[type],
              default: Any = _MISSING) -> Any:
    """A request argument checked the way Klipper's ``WebRequest.get`` checks it."""
    value = params.get(item, default)
    if value is _MISSING:
        raise CommandError(f"Missing Argument [{item}]")
    if item in params and type(value) not in types:
        raise CommandError(f"Invalid Argument Type [{item}]")
    return value


# --- control socket: the "Klipper service" of the simulated machine ----------

class ControlServer:
    """Line-JSON control of a stand-in: stop/start (the service), print state, macro calls.

    The component's simulation service and the demo use it; each request is
    one JSON object on one line, each answer too.
    """

    def __init__(self, standin: KlippyStandIn, path: str) -> None:
        self.standin = standin
        self.path = path
        self._server: Optional[asyncio.AbstractServer] = None

    async def start(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if os.path.lexists(self.path):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    answer = await self.handle(json.loads(line))
                except (ValueError, CommandError, KeyError, TypeError) as exc:
                    answer = {"error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(self, request: Dict[str, Any]) -> Dict[str, Any]:
        action = request.get("action")
        s = self.standin
        if action == "stop":
            await s.stop()
        elif action == "start":
            await s.start()
        elif action == "restart":
            await s.stop()
            await s.start()
        elif action == "print_state":
            s.set_print_state(request["state"], request.get("filename", ""))
        elif action == "gcode":
            await s.run_gcode(request["script"])
        elif action == "mcu_reachable":
            s.set_mcu_reachable(request["name"], bool(request.get("reachable", True)))
        elif action != "status":
            raise CommandError(f"unknown action {action!r}")
        return {"running": s.running, "state": s.state, "print_state": s.print_stats["state"],
                "starts": s.starts,
                "mcus": {m.object_name: m.version for m in s.mcus}}


async def control_request(path: str, action: str, timeout: float = 10.0,
                          **fields: Any) -> Dict[str, Any]:
    """Send one request to a ControlServer and return its answer."""
    async def exchange() -> Dict[str, Any]:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            request = dict(fields, action=action)
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        answer = json.loads(line) if line else {"error": "no answer"}
        if "error" in answer:
            raise CommandError(answer["error"])
        return answer
    return await asyncio.wait_for(exchange(), timeout)


# --- running a stand-in in a thread (tests) ----------------------------------

class StandInThread:
    """Runs a KlippyStandIn on its own event loop in a thread.

    Tests keep a stand-in alive across several test functions (each with its
    own event loop) and drive it synchronously: ``call(fn, *args)`` runs a
    function or coroutine function on the stand-in's loop and returns its result.
    """

    def __init__(self, standin: KlippyStandIn, control_path: Optional[str] = None) -> None:
        self.standin = standin
        self.control = ControlServer(standin, control_path) if control_path else None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="klippy-standin",
                                        daemon=True)

    def start(self) -> StandInThread:
        self._thread.start()
        self.call(self.standin.start)
        if self.control is not None:
            self.call(self.control.start)
        return self

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0, **kw: Any) -> Any:
        async def runner() -> Any:
            result = fn(*args, **kw)
            if asyncio.iscoroutine(result) or asyncio.isfuture(result):
                result = await result
            return result
        return asyncio.run_coroutine_threadsafe(runner(), self.loop).result(timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        if self.control is not None:
            self.call(self.control.stop)
        self.call(self.standin.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


# --- command line (the demo can also run it as a separate process) -----------

def _parse_mcu(text: str) -> SimMcu:
    """``NAME[,key=value...]``: ``mcu,serial=/dev/serial/by-id/x,version=v0.13.0``."""
    name, *pairs = text.split(",")
    mcu = SimMcu(name=name)
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key == "version":
            mcu.version = value
        elif key == "mcu_type":
            mcu.mcu_type = value
        elif key == "reachable":
            mcu.reachable = value.lower() not in ("0", "no", "false")
        else:
            mcu.settings[key] = value
    return mcu


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Klipper stand-in for Moonraker's unix socket")
    parser.add_argument("--socket", required=True, help="unix socket path (klippy_uds_address)")
    parser.add_argument("--control", help="control socket path (stop/start/print state)")
    parser.add_argument("--mcu", action="append", default=[], type=_parse_mcu,
                        help="NAME[,serial=..|canbus_uuid=..][,version=..][,reachable=no] "
                             "(repeatable)")
    parser.add_argument("--macros", action="append", default=[], help="Klipper cfg with [gcode_macro]")
    parser.add_argument("--software-version", default=DEFAULT_VERSION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    async def run() -> None:
        standin = KlippyStandIn(args.socket, mcus=args.mcu or [SimMcu()],
                                software_version=args.software_version,
                                macro_files=args.macros)
        await standin.start()
        control = ControlServer(standin, args.control) if args.control else None
        if control is not None:
            await control.start()
        try:
            await asyncio.Event().wait()
        finally:
            if control is not None:
                await control.stop()
            await standin.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
