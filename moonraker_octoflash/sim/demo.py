"""``python3 -m moonraker_octoflash.sim.demo``: octoflash in a real Moonraker, no printer needed.

Starts, in one folder:

* a simulated machine: a BigTreeTech Octopus (STM32F446) running Klipper as
  a USB-CAN bridge behind Katapult and a BigTreeTech EBB36 (STM32G0B1) CAN
  toolhead behind Katapult, both with older firmware than the Klipper
  checkout, and an LDO Nitehawk-SB (RP2040, USB) waiting in BOOTSEL with an
  empty flash; the ``dfu-util``, ``flashtool.py`` and ``rp2040_flash``
  doubles write into their simulated flash;
* small Klipper-like and Katapult-like source trees (git checkouts) whose
  ``make`` produces firmware images without an ARM compiler;
* a Klipper stand-in on Moonraker's unix socket that reports the boards'
  running versions and can be stopped and started like the Klipper service;
* a real Moonraker 0.11 with the octoflash component linked in and a profile
  for each board.

Builds and flashes then run exactly as on a printer.  Ctrl-C stops everything.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from .board import SimulatedMachine
    from .klippy import SimMcu

OLD_FIRMWARE = "v0.12.0-200-g5b3a0c1"
# The Nitehawk's serial number (the RP2040's flash id), fixed so its by-id
# names, and so the profile's serial, stay the same from run to run.
NITEHAWK_CHIP_ID = "E6625C05E7215D2C"
DEFAULT_PORT = 7125


class DemoError(Exception):
    pass


class Demo:
    """Everything the demo starts, and how to stop it again."""

    def __init__(self, data_dir: str, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.port = port
        self.host = host
        self.sim_dir = os.path.join(self.data_dir, "sim")
        self.machine_dir = os.path.join(self.sim_dir, "machine")
        self.klippy_socket = os.path.join(self.data_dir, "comms", "klippy.sock")
        self.control_socket = os.path.join(self.machine_dir, "klippy-control.sock")
        self.moonraker: Optional[subprocess.Popen] = None
        self.standin: Any = None
        self.control: Any = None
        self.machine: Optional[SimulatedMachine] = None

    # --- setting up ---------------------------------------------------------

    def prepare(self) -> None:
        """Source trees, boards, config and the component link (idempotent)."""
        from ..moonraker.link import link_component
        from .board import SimulatedMachine
        from .trees import install_tree

        for sub in ("config", "logs", "comms", "gcodes", "sim"):
            os.makedirs(os.path.join(self.data_dir, sub), exist_ok=True)
        for kind in ("klipper", "katapult"):
            dest = os.path.join(self.sim_dir, kind)
            if not os.path.isdir(os.path.join(dest, ".git")):
                install_tree(kind, dest)
        self._present_klipper_checkout(os.path.join(self.sim_dir, "klipper"))
        fresh = not os.path.isdir(os.path.join(self.machine_dir, "boards"))
        self.machine = machine = SimulatedMachine(self.machine_dir)
        if fresh or not machine.boards():
            machine.add_board("octopus", "stm32f446xx", transport="usb", bootloader="katapult",
                              firmware={"version": OLD_FIRMWARE, "bridge": True})
            machine.add_board("toolhead", "stm32g0b1xx", transport="can", bootloader="katapult",
                              firmware={"version": OLD_FIRMWARE})
            # fresh from the box, held in BOOTSEL: the boot ROM, nothing in flash
            machine.add_board("nitehawk", "rp2040", transport="usb", bootloader=None,
                              mode="bootsel", chip_id=NITEHAWK_CHIP_ID)
            machine.set_klipper_running(False)
        machine.sync_links()
        self._write_config()
        self._write_printer_cfg()
        try:
            link_component()
        except Exception as exc:
            raise DemoError(f"Cannot link the component into Moonraker: {exc}") from exc

    @staticmethod
    def _present_klipper_checkout(path: str) -> None:
        """What Mainsail and Fluidd expect of a Klipper checkout: the examples
        folder Moonraker serves (else a path warning in both clients), and a
        tracking remote (else Moonraker calls the Klipper entry invalid, which
        disables Fluidd's "Update all").  The remote is a local one: nothing
        to fetch from the internet, and no GitHub links to commits GitHub does
        not have."""
        from .trees import track_local_origin
        examples = os.path.join(path, "config")
        os.makedirs(examples, exist_ok=True)
        with open(os.path.join(examples, "sample-octoflash-demo.cfg"), "w", encoding="utf-8") as f:
            f.write("# Klipper's config examples live here; the demo has this one.\n")
        # untracked and ignored: the checkout stays clean and at its version
        exclude = os.path.join(path, ".git", "info", "exclude")
        os.makedirs(os.path.dirname(exclude), exist_ok=True)
        with open(exclude, "a+", encoding="utf-8") as f:
            f.seek(0)
            if "/config/" not in f.read().splitlines():
                f.write("/config/\n")
        track_local_origin(path)

    def _write_config(self) -> None:
        from ..discovery.serial import katapult_by_id_name, klipper_by_id_name
        machine = self.machine
        assert machine is not None
        tools = machine.tool_paths()
        octopus = machine.board("octopus")
        toolhead = machine.board("toolhead")
        nitehawk_katapult = os.path.join(machine.by_id_dir,
                                         katapult_by_id_name("rp2040", NITEHAWK_CHIP_ID))
        nitehawk_klipper = os.path.join(machine.by_id_dir,
                                        klipper_by_id_name("rp2040", NITEHAWK_CHIP_ID))
        trusted = "  127.0.0.0/8\n"
        if self.host not in ("127.0.0.1", "localhost"):
            trusted += "  10.0.0.0/8\n  172.16.0.0/12\n  192.168.0.0/16\n"
        text = textwrap.dedent(f"""\
            # moonraker-octoflash demo: written by `python3 -m moonraker_octoflash.sim.demo`
            [server]
            host: {self.host}
            port: {self.port}
            klippy_uds_address: {self.klippy_socket}

            [machine]
            provider: none
            validate_service: False

            [authorization]
            cors_domains:
              *
            trusted_clients:
            """) + trusted + self._update_manager_section() + textwrap.dedent(f"""
            [octoflash]
            klipper_path: {self.sim_dir}/klipper
            katapult_path: {self.sim_dir}/katapult
            dfu_util_path: {tools['dfu_util']}
            flashtool_path: {tools['flashtool']}
            serial_by_id_path: {machine.by_id_dir}
            device_wait_timeout: 20
            reconnect_timeout: 20
            machine: moonraker_octoflash.sim.machine:open_machine {self.machine_dir}

            # The Octopus: Klipper as USB-CAN bridge, written through Katapult.
            [octoflash octopus]
            preset: btt-octopus-f446-canbridge
            description: Simulated Octopus (USB-CAN bridge)
            canbus_uuid: {octopus.canbus_uuid}
            klipper_mcu: mcu
            auto_update: True

            # The CAN toolhead: a BigTreeTech EBB36/EBB42 (STM32G0B1) behind Katapult,
            # on the bridge's bus at the bridge's 1 Mbit/s.
            [octoflash toolhead]
            preset: btt-ebb-klipper-1m
            description: Simulated EBB36 CAN toolhead
            canbus_uuid: {toolhead.canbus_uuid}
            klipper_mcu: toolhead
            auto_update: True

            # The RP2040 toolhead, an LDO Nitehawk-SB on USB, new and waiting in
            # BOOTSEL: its first install writes Katapult through the boot ROM...
            [octoflash nitehawk-katapult]
            preset: ldo-nitehawk-sb-katapult
            description: Simulated Nitehawk-SB: Katapult, first through the boot ROM
            serial: {nitehawk_katapult}

            # ...then Klipper goes through that Katapult over USB.  Left out of
            # "update all" until its first install is done by hand.
            [octoflash nitehawk]
            preset: ldo-nitehawk-sb-klipper
            description: Simulated Nitehawk-SB (RP2040, USB)
            serial: {nitehawk_klipper}
            klipper_mcu: nitehawk
            auto_update: False
            """)
        path = os.path.join(self.data_dir, "config", "moonraker.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    @staticmethod
    def _update_manager_section() -> str:
        """The firmware entries need [update_manager]; Moonraker's own entry in it
        needs Moonraker to run from a virtualenv (scripts/demo uses .venv)."""
        if sys.prefix == getattr(sys, "base_prefix", sys.prefix):
            return ""
        return textwrap.dedent("""
            [update_manager]
            enable_auto_refresh: False
            enable_system_updates: False
            """)

    def _write_printer_cfg(self) -> None:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        macros = os.path.join(repo, "docs", "macros.cfg")
        dest = os.path.join(self.data_dir, "config", "octoflash-macros.cfg")
        if os.path.isfile(macros):
            shutil.copyfile(macros, dest)
        printer_cfg = os.path.join(self.data_dir, "config", "printer.cfg")
        with open(printer_cfg, "w", encoding="utf-8") as f:
            f.write("# Simulated printer for the octoflash demo\n[include octoflash-macros.cfg]\n")

    # --- the Klipper stand-in ------------------------------------------------

    def _klipper_mcus(self) -> List[SimMcu]:
        """What a starting Klipper finds: each board's running firmware."""
        from ..discovery.serial import klipper_by_id_name
        from .klippy import SimMcu
        assert self.machine is not None
        mcus: List[SimMcu] = []
        for klipper_name, board_name in (("mcu", "octopus"), ("toolhead", "toolhead"),
                                         ("nitehawk", "nitehawk")):
            board = self.machine.board(board_name)
            status = self.machine.klipper_mcu_status(board_name) or {}
            if board_name == "nitehawk":
                if board.running_firmware() is None:
                    # no Klipper on it yet (BOOTSEL, Katapult only): printer.cfg
                    # gains its [mcu nitehawk] once Klipper is on the board
                    continue
                settings: Dict[str, Any] = {
                    "serial": os.path.join(self.machine.by_id_dir,
                                           klipper_by_id_name(board.mcu, board.chip_id))}
            else:
                settings = {"canbus_uuid": board.canbus_uuid, "canbus_interface": "can0"}
            mcus.append(SimMcu(
                name=klipper_name, settings=settings,
                version=status.get("mcu_version", ""),
                mcu_type=(status.get("mcu_constants") or {}).get("MCU", board.mcu)))
        return mcus

    async def start(self) -> None:
        from .klippy import ControlServer, KlippyStandIn
        from .trees import describe
        assert self.machine is not None
        machine = self.machine
        printer_cfg = os.path.join(self.data_dir, "config", "printer.cfg")
        self.standin = KlippyStandIn(
            self.klippy_socket, mcus=self._klipper_mcus,
            software_version=describe(os.path.join(self.sim_dir, "klipper")),
            macro_files=[os.path.join(self.data_dir, "config", "octoflash-macros.cfg")],
            config_file=printer_cfg, klipper_path=os.path.join(self.sim_dir, "klipper"),
            log_file=os.path.join(self.data_dir, "logs", "klippy.log"),
            on_start=lambda: machine.set_klipper_running(True),
            on_stop=lambda: machine.set_klipper_running(False))
        await self.standin.start()
        self.control = ControlServer(self.standin, self.control_socket)
        await self.control.start()
        self._start_moonraker()
        await self._wait_moonraker()

    def _start_moonraker(self) -> None:
        try:
            import moonraker  # noqa: F401
        except ImportError:
            raise DemoError("Moonraker is not installed in this Python: "
                            "pip install moonraker==0.11.0 (scripts/demo does it for you)") from None
        if not _port_free(self.host, self.port):
            raise DemoError(f"Port {self.port} is in use (another Moonraker?); "
                            "choose another with --port")
        env = dict(os.environ)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = package_parent + os.pathsep + env.get("PYTHONPATH", "")
        console = open(os.path.join(self.data_dir, "logs", "moonraker-console.log"), "ab")  # noqa: SIM115
        self.moonraker = subprocess.Popen(
            [sys.executable, "-m", "moonraker", "-d", self.data_dir],
            stdout=console, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        console.close()

    async def _wait_moonraker(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/server/info"
        while time.monotonic() < deadline:
            if self.moonraker is not None and self.moonraker.poll() is not None:
                raise DemoError("Moonraker stopped during start-up; see "
                                f"{self.data_dir}/logs/moonraker.log")
            if await asyncio.to_thread(_http_ok, url):
                return
            await asyncio.sleep(0.2)
        raise DemoError(f"Moonraker did not answer within {timeout:.0f} s")

    async def stop(self) -> None:
        proc = self.moonraker
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 5)
        if self.control is not None:
            await self.control.stop()
        if self.standin is not None:
            await self.standin.stop()

    def moonraker_exited(self) -> bool:
        return self.moonraker is not None and self.moonraker.poll() is not None

    def banner(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        base = f"http://{shown}:{self.port}"
        return textwrap.dedent(f"""\

            moonraker-octoflash demo is running.

              Open:    {base}/server/octoflash/web   (the octoflash page)
              Moonraker API: {base}  (point Mainsail or Fluidd at it to see the
                       firmware entries in the update panel and the console)
              Boards:  octopus   BigTreeTech Octopus (STM32F446), USB-CAN bridge, out of date
                       toolhead  BigTreeTech EBB36 (STM32G0B1) on CAN at 1 Mbit/s, out of date
                       nitehawk  LDO Nitehawk-SB (RP2040, USB) waiting in BOOTSEL, empty:
                                 profile nitehawk-katapult installs Katapult through the
                                 boot ROM, then profile nitehawk writes Klipper over USB

              Try:     curl -H 'Content-Type: application/json' -d '{{"profile": "toolhead"}}' \\
                            {base}/server/octoflash/flash
                       curl -H 'Content-Type: application/json' -d '{{"profile": "nitehawk-katapult"}}' \\
                            {base}/server/octoflash/flash
                       curl '{base}/server/octoflash/jobs'
                       curl -X POST '{base}/printer/gcode/script?script=OCTOFLASH_UPDATE_ALL'

              Data:    {self.data_dir}  (logs in logs/)
            Press Ctrl-C to stop.
            """)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "localhost") else "127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


async def run(demo: Demo, stop_after: Optional[float] = None) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await asyncio.to_thread(demo.prepare)
        await demo.start()
        print(demo.banner(), flush=True)
        started = time.monotonic()
        while not stopping.is_set():
            if demo.moonraker_exited():
                print("Moonraker stopped on its own; see "
                      f"{demo.data_dir}/logs/moonraker.log", file=sys.stderr)
                return 1
            if stop_after is not None and time.monotonic() - started > stop_after:
                break
            try:
                await asyncio.wait_for(stopping.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        print("Stopping the demo...", flush=True)
        return 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    finally:
        await demo.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m moonraker_octoflash.sim.demo",
        description="Run octoflash in a real Moonraker 0.11 with a simulated Octopus (USB-CAN "
                    "bridge), an STM32G0B1 CAN toolhead and an RP2040 toolhead waiting in "
                    "BOOTSEL (no printer, no ARM compiler needed).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"Moonraker's port (default {DEFAULT_PORT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address Moonraker listens on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="keep the demo's data here and reuse it next time "
                             "(default: a temporary folder removed on exit)")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    temporary = args.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="octoflash-demo-") if temporary else args.data_dir
    try:
        return asyncio.run(run(Demo(data_dir, args.port, args.host), args.stop_after))
    finally:
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
        print("Demo stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
