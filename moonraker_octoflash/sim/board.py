"""Simulated boards whose whole state lives in a folder.

The tool doubles run as separate processes, while the pyusb backend and the
CAN nodes run inside the process that scans; they agree because everything
a board is — its mode, what is in its flash, the by-id links it shows — is
kept on disk: ``boards/<name>/state.json`` plus ``boards/<name>/flash.bin``
(the flash, byte for byte), updated under a file lock and replaced
atomically.

    machine = SimulatedMachine("/tmp/sim")
    octopus = machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                firmware={"version": "v0.12.0", "bridge": True})
    toolhead = machine.add_board("ebb", "stm32g0b1xx", transport="can",
                                 bootloader="katapult", firmware={"version": "v0.12.0"})
    machine.tool_paths()    # {"dfu_util": ..., "flashtool": ...}
    machine.scan_options()  # keyword arguments for discovery.scan()

Modes: ``dfu`` (ROM loader), ``katapult``, ``klipper`` (USB serial or CAN,
by the board's transport), ``klipper-canbridge`` (gs_usb, brings up its CAN
interface), ``off`` (nothing runs: erased or broken flash).  While a board
reboots (``boot_delay``) it reports ``booting`` and is seen nowhere.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time

from ..discovery.identity import (USB_ID_CANBRIDGE, USB_ID_DFU, USB_ID_KATAPULT,
                                  USB_ID_KLIPPER, canbus_uuid_from_chip_id, normalize_uuid)
from .images import FLASH_BASE, classify_image, default_app_start

# The tool doubles are processes started hundreds of times in a test run: the
# modules they import at start are kept few (typing, hashlib, random only where
# used).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

    from ..discovery.usb import DfuLayout

MODES = ("dfu", "katapult", "klipper", "klipper-canbridge", "off", "bootsel")
ENV_DIR = "OCTOFLASH_SIM_DIR"
ENV_FAULTS = "OCTOFLASH_SIM_FAULTS"
HISTORY_KEPT = 100
# Where the listeners of a machine's device announcements are named (sim/uevents.py).
UEVENT_FOLDER = "uevents"
UEVENT_ADDRESS = b"\0octoflash-sim-uevents-"
STOCK_APP_START = FLASH_BASE + 0x8000
_held = threading.local()      # lock depth per machine folder, for re-entrancy

# DFU alt settings of the STM32F4 ROM loader besides the flash itself.
DFU_EXTRA_ALTS = ["@Option Bytes  /0x1FFFC000/01*016 e",
                  "@OTP Memory /0x1FFF7800/01*512 e,01*016 e",
                  "@Device Feature/0xFFFF0000/01*004 e"]

# MCUs the simulation knows beyond the presets (a CAN toolhead's chip).
_EXTRA_MCUS: Dict[str, Dict[str, Any]] = {
    "stm32g0b1xx": {"flash_size": 0x80000,
                    "dfu_layout": "@Internal Flash   /0x08000000/256*02Kg"},
    "stm32f072xb": {"flash_size": 0x20000,
                    "dfu_layout": "@Internal Flash  /0x08000000/064*0002Kg"},
    # The RP2040/RP2350 erase 4 KiB sectors of their QSPI flash (no DFU: the layout
    # only says where the flash is and how it is erased).
    "rp2040": {"flash_size": 0x200000, "dfu_layout": "@Flash /0x10000000/512*004Kg"},
    "rp2350": {"flash_size": 0x200000, "dfu_layout": "@Flash /0x10000000/512*004Kg"},
}
USB_ID_BOOTSEL = {"rp2040": (0x2E8A, 0x0003), "rp2350": (0x2E8A, 0x000F)}
# What the RP2040 boot ROM reports as its USB serial on every board (lsusb -v: iSerial
# "E0C9125B0D9B" on a Pico and a XIAO alike): an id of the ROM, not of the board.
RP2040_BOOT_ROM_SERIAL = "E0C9125B0D9B"

FAULTS = {
    "dfu_mass_erase_unsupported": "dfu-util: the board refuses the mass-erase command",
    "dfu_download_error": "dfu-util: USB error half way through the download",
    "dfu_hang": "dfu-util: hangs during the download",
    "katapult_connect_error": "flashtool: Katapult does not answer CONNECT",
    "katapult_write_error": "flashtool: a block write fails half way",
    "katapult_link_lost": "flashtool: the connection breaks half way through the write, "
                          "so the COMPLETE command that follows fails too",
    "katapult_verify_error": "flashtool: read-back checksum differs",
    "katapult_hang": "flashtool: hangs during the write",
    "katapult_pause": "flashtool: the write waits, a third of the way, until the fault "
                      "is cleared (a test holds a write in progress)",
    "serial_in_use": "flashtool: the serial device is held by another program",
    "no_bootloader_request": "the running Klipper ignores bootloader requests",
    "no_return": "after a write the board does not come back",
    "rp2040_write_error": "rp2040_flash: a PICOBOOT write fails half way",
    "katapult_tty_late": "flashtool: a USB-CAN bridge comes back as Katapult but its tty is "
                         "not there yet (Failed to locate serial tty path)",
    "usb_access_denied": "the service's user may not open the USB devices (no udev rule): "
                         "dfu-util and pyusb get LIBUSB_ERROR_ACCESS",
}


def _rom_dfu_serial(chip_id: str) -> Optional[str]:
    """The serial the simulated ROM loader shows, built here the way ST's USB device code
    (Get_SerialNum / IntToUnicode) builds it, nibble by nibble from the 96-bit unique id
    (little-endian words as the chip stores them): 8 digits of word0 + word2, then the
    top 4 digits of word1.  Written apart from ``discovery.identity`` on purpose, so the
    tests that match a DFU device to its board do not check that function against
    itself.  Not checked against a real ROM loader (docs/flashing.md)."""
    if len(chip_id) != 24:
        return None
    try:
        raw = bytes.fromhex(chip_id)
    except ValueError:
        return None
    words = [raw[i] | raw[i + 1] << 8 | raw[i + 2] << 16 | raw[i + 3] << 24 for i in (0, 4, 8)]

    def int_to_unicode(value: int, digits: int) -> str:
        out = ""
        for _ in range(digits):
            nibble = (value >> 28) & 0xF
            out += chr(ord("0") + nibble) if nibble < 10 else chr(ord("A") + nibble - 10)
            value = (value << 4) & 0xFFFFFFFF
        return out
    return int_to_unicode((words[0] + words[2]) & 0xFFFFFFFF, 8) + int_to_unicode(words[1], 4)


def mcu_facts(mcu: str) -> Dict[str, Any]:
    """Flash size and DFU layout of an MCU (presets first, then the extras)."""
    from ..presets import mcu_info
    info = mcu_info(mcu)
    if info is not None:
        layout = info.dfu_layout or _EXTRA_MCUS.get(mcu, {}).get("dfu_layout")
        return {"flash_size": info.flash_size, "dfu_layout": layout}
    if mcu in _EXTRA_MCUS:
        return dict(_EXTRA_MCUS[mcu])
    return {"flash_size": 0x80000, "dfu_layout": "@Internal Flash  /0x08000000/256*002Kg"}


def _derived_facts(state: Dict[str, Any]) -> Dict[str, Any]:
    """What a board's MCU and chip id fix for good, worked out by the product's own
    readers when the board is made and kept in its state: the tool doubles then
    never import those readers (and the dataclasses they bring)."""
    from ..discovery.serial import katapult_by_id_name, klipper_by_id_name
    from ..discovery.usb import parse_dfu_layout
    from ..mcus import flash_base
    mcu, chip = state["mcu"], state["chip_id"]
    layout = parse_dfu_layout(state["dfu_layout"])
    assert layout is not None, "simulated MCU without a flash layout"
    runs: List[List[int]] = []        # [first sector, size, count]: a short list
    for start, size in layout.sectors:
        if runs and runs[-1][1] == size and runs[-1][0] + size * runs[-1][2] == start:
            runs[-1][2] += 1
        else:
            runs.append([start, size, 1])
    names = None
    if state["transport"] == "usb":
        names = {"katapult": katapult_by_id_name(mcu, chip),
                 "klipper": klipper_by_id_name(mcu, chip)}
    return {"flash_base": flash_base(mcu) or FLASH_BASE, "sector_runs": runs,
            "by_id_names": names}


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _atomic_write_json(path: str, data: Any) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str, default: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def announce_devices(directory: str) -> None:
    """Tell every listener of the machine in ``directory`` that a device came or went
    (``sim/uevents.py``), as the kernel and udev announce a USB device."""
    folder = os.path.join(directory, UEVENT_FOLDER)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    if not names:
        return
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            try:
                sock.sendto(b"change", UEVENT_ADDRESS + name.encode())
            except (ConnectionRefusedError, FileNotFoundError):
                forget_listener(os.path.join(folder, name))    # its listener is gone
            except OSError:
                pass      # a full queue: that listener has a wake pending anyway


def listen_for_devices(directory: str) -> Tuple[Any, str]:
    """A datagram socket that receives the announcements of the machine in ``directory``,
    and the file that names it (``forget_listener`` it when the socket is closed)."""
    import secrets
    import socket
    folder = os.path.join(directory, UEVENT_FOLDER)
    os.makedirs(folder, exist_ok=True)
    name = f"{os.getpid()}-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(UEVENT_ADDRESS + name.encode())
        registry = os.path.join(folder, name)
        open(registry, "w").close()
    except BaseException:
        sock.close()
        raise
    return sock, registry


def forget_listener(registry: str) -> None:
    try:
        os.unlink(registry)
    except OSError:
        pass


class SimulatedMachine:
    """A folder holding simulated boards, their by-id links and the tool doubles' log."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(os.path.expanduser(directory))
        self.boards_dir = os.path.join(self.directory, "boards")
        self.dev_dir = os.path.join(self.directory, "dev")
        self.by_id_dir = os.path.join(self.dev_dir, "serial", "by-id")
        # What the kernel shows of each USB device (readable without opening it).
        self.sysfs_usb_dir = os.path.join(self.directory, "sys", "bus", "usb", "devices")
        self.bin_dir = os.path.join(self.directory, "bin")
        self.log_path = os.path.join(self.directory, "tool-log.jsonl")
        self._config_path = os.path.join(self.directory, "machine.json")
        for d in (self.boards_dir, self.by_id_dir, self.bin_dir, self.sysfs_usb_dir):
            os.makedirs(d, exist_ok=True)
        if not os.path.exists(self._config_path):
            _atomic_write_json(self._config_path, {
                "flashtool_version": "current", "tool_delay": 0.05,
                "can_adapters": [], "faults": [], "klipper_running": True,
                "next_usb_address": 5, "next_index": 0})

    @classmethod
    def from_env(cls) -> SimulatedMachine:
        directory = os.environ.get(ENV_DIR)
        if not directory:
            raise RuntimeError(f"{ENV_DIR} is not set: the tool doubles need a simulated machine")
        return cls(directory)

    # --- locking and config ----------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes and threads; re-entrant within one thread."""
        depth = getattr(_held, self.directory, 0)
        if depth:
            setattr(_held, self.directory, depth + 1)
            try:
                yield
            finally:
                setattr(_held, self.directory, depth)
            return
        fd = os.open(os.path.join(self.directory, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            setattr(_held, self.directory, 1)
            yield
        finally:
            setattr(_held, self.directory, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def config(self) -> Dict[str, Any]:
        return _read_json(self._config_path, {})

    def update_config(self, change: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        with self.lock():
            cfg = self.config
            change(cfg)
            _atomic_write_json(self._config_path, cfg)
            return cfg

    def _allocate(self, key: str) -> int:
        result: List[int] = []

        def bump(cfg: Dict[str, Any]) -> None:
            result.append(int(cfg.get(key, 0)))
            cfg[key] = result[0] + 1
        self.update_config(bump)
        return result[0]

    @property
    def flashtool_version(self) -> str:
        """``current`` (Katapult 2025: bridge support, ``Programming Complete``),
        ``legacy`` (before October 2024: no ``-s``, ``Flash Success`` on every success)
        or ``old`` (before September 2024: ``-r`` for CAN only, ignored over serial)."""
        return os.environ.get("OCTOFLASH_SIM_FLASHTOOL_VERSION") or \
            self.config.get("flashtool_version", "current")

    @flashtool_version.setter
    def flashtool_version(self, value: str) -> None:
        if value not in ("current", "legacy", "old"):
            raise ValueError("flashtool_version is 'current', 'legacy' or 'old'")
        self.update_config(lambda c: c.__setitem__("flashtool_version", value))

    @property
    def tool_delay(self) -> float:
        """Seconds a simulated write takes (the demo slows it down to be watched)."""
        return float(self.config.get("tool_delay", 0.05))

    @tool_delay.setter
    def tool_delay(self, value: float) -> None:
        self.update_config(lambda c: c.__setitem__("tool_delay", float(value)))

    def set_fault(self, name: str, on: bool = True) -> None:
        """Switch a failure mode on for every board (see ``FAULTS``)."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")

        def change(cfg: Dict[str, Any]) -> None:
            faults = set(cfg.get("faults", []))
            (faults.add if on else faults.discard)(name)
            cfg["faults"] = sorted(faults)
        self.update_config(change)

    def faults(self) -> List[str]:
        env = [f for f in os.environ.get(ENV_FAULTS, "").split(",") if f]
        return sorted(set(self.config.get("faults", [])) | set(env))

    # --- boards --------------------------------------------------------------
    def add_board(self, name: str, mcu: str, *, transport: str = "usb",
                  mode: Optional[str] = None, bootloader: Optional[str] = "katapult",
                  app_start: Optional[int] = None, firmware: Optional[Dict[str, Any]] = None,
                  chip_id: Optional[str] = None, canbus_uuid: Optional[str] = None,
                  dfu_serial: Optional[str] = None, can_interface: str = "can0",
                  leave_status_error: bool = True, boot_delay: float = 0.0,
                  katapult_version: str = "v0.0.1-110-gb0bf421") -> SimulatedBoard:
        """Create a board.  ``firmware`` describes a Klipper already in flash
        (``version``, ``bridge``); ``mode`` defaults to what a reset leads to."""
        if transport not in ("usb", "can"):
            raise ValueError("transport is 'usb' or 'can'")
        index = self._allocate("next_index")
        import random
        chip = (chip_id or "".join(random.choice("0123456789ABCDEF") for _ in range(24))).upper()
        facts = mcu_facts(mcu)
        state: Dict[str, Any] = {
            "name": name, "mcu": mcu, "chip_id": chip, "transport": transport,
            "index": index, "port_path": f"1-1.{index + 1}",
            "dfu_serial": dfu_serial or _rom_dfu_serial(chip) or chip[:12],
            "canbus_uuid": normalize_uuid(canbus_uuid) or canbus_uuid_from_chip_id(chip),
            "can_interface": can_interface, "flash_size": facts["flash_size"],
            "dfu_layout": facts["dfu_layout"], "leave_status_error": leave_status_error,
            "boot_delay": boot_delay, "ready_at": 0.0, "mode": "off",
            "usb_address": 0, "node_assigned": False, "faults": [], "regions": [],
            "history": [],
        }
        state.update(_derived_facts(state))
        board_dir = os.path.join(self.boards_dir, name)
        if os.path.exists(board_dir):
            raise ValueError(f"a board named {name!r} already exists")
        os.makedirs(board_dir)
        with open(os.path.join(board_dir, "flash.bin"), "wb") as f:
            f.write(b"\xff" * state["flash_size"])
        _atomic_write_json(os.path.join(board_dir, "state.json"), state)
        board = SimulatedBoard(self, name)
        start = app_start or default_app_start(mcu)
        if bootloader == "katapult":
            board.write_flash(board.flash_base, _fake_katapult(start, katapult_version),
                              name="katapult.bin")
        elif bootloader == "stock":
            start = STOCK_APP_START
            board.write_flash(FLASH_BASE, b"BTT-STOCK-BOOTLOADER".ljust(0x4000, b"\0"),
                              name="stock-bootloader.bin", kind="stock-bootloader")
        elif bootloader is not None:
            raise ValueError("bootloader is 'katapult', 'stock' or None")
        if firmware is not None:
            address = start if bootloader else board.flash_base
            board.write_flash(address, make_klipper_image(
                mcu, firmware.get("version", "v0.12.0-100-gsim"),
                bridge=bool(firmware.get("bridge")), canbus=transport == "can" or
                bool(firmware.get("bridge"))), name="klipper.bin")
        board.reset(delay=0.0)
        if mode is not None:
            board.set_mode(mode, delay=0.0)
        return board

    def board(self, name: str) -> SimulatedBoard:
        if not os.path.isfile(os.path.join(self.boards_dir, name, "state.json")):
            raise KeyError(name)
        return SimulatedBoard(self, name)

    def boards(self) -> List[SimulatedBoard]:
        names = sorted(os.listdir(self.boards_dir)) if os.path.isdir(self.boards_dir) else []
        return [SimulatedBoard(self, n) for n in names
                if os.path.isfile(os.path.join(self.boards_dir, n, "state.json"))]

    def board_for_tty(self, path: str) -> Optional[SimulatedBoard]:
        real = os.path.realpath(path)
        for b in self.boards():
            if os.path.realpath(b.tty_path) == real:
                return b
        return None

    def board_for_uuid(self, uuid: str) -> Optional[SimulatedBoard]:
        wanted = normalize_uuid(uuid)
        for b in self.boards():
            if b.canbus_uuid == wanted:
                return b
        return None

    # --- CAN interfaces -------------------------------------------------------
    def add_can_adapter(self, interface: str = "can0") -> None:
        """A CAN interface that is always up (a USB-CAN adapter, not a bridge board)."""
        def change(cfg: Dict[str, Any]) -> None:
            cfg["can_adapters"] = sorted(set(cfg.get("can_adapters", [])) | {interface})
        self.update_config(change)

    def all_can_interfaces(self) -> List[str]:
        names = set(self.config.get("can_adapters", []))
        for b in self.boards():
            names.add(b.can_interface)
        return sorted(names)

    def can_interfaces_up(self) -> List[str]:
        """Adapters, plus the interface of every bridge board running its bridge."""
        up = set(self.config.get("can_adapters", []))
        for b in self.boards():
            if b.mode == "klipper-canbridge":
                up.add(b.can_interface)
        return sorted(up)

    # --- what the host sees --------------------------------------------------
    def sync_links(self) -> None:
        """Make the simulated by-id folder show exactly the serial ports of the boards now."""
        with self.lock():
            wanted: Dict[str, str] = {}
            for b in self.boards():
                name = b.by_id_name()
                if name:
                    wanted[name] = b.tty_path
            for name in os.listdir(self.by_id_dir):
                path = os.path.join(self.by_id_dir, name)
                if wanted.get(name) != (os.readlink(path) if os.path.islink(path) else None):
                    os.unlink(path)
            for name, target in wanted.items():
                path = os.path.join(self.by_id_dir, name)
                if not os.path.lexists(path):
                    if not os.path.exists(target):
                        open(target, "a").close()
                    os.symlink(target, path)
            self._sync_sysfs()

    def _sync_sysfs(self) -> None:
        """``sys/bus/usb/devices/PORT/``: the attributes the kernel gives every user."""
        import shutil
        present: Dict[str, Dict[str, str]] = {}
        for b in self.boards():
            ident = b.usb_identity()
            if ident is None:
                continue
            vid, pid = ident["id"]
            files = {"idVendor": f"{vid:04x}", "idProduct": f"{pid:04x}",
                     "serial": str(ident.get("serial") or ""),
                     "manufacturer": str(ident.get("manufacturer") or ""),
                     "product": str(ident.get("product") or ""),
                     "devnum": str(ident.get("address") or 0), "busnum": "1"}
            port = str(ident["port_path"])
            if ident.get("dfu_layout"):
                files[os.path.join(f"{port}:1.0", "interface")] = str(ident["dfu_layout"])
            present[port] = files
        for name in os.listdir(self.sysfs_usb_dir):
            if name not in present:
                shutil.rmtree(os.path.join(self.sysfs_usb_dir, name), ignore_errors=True)
        for port, files in present.items():
            for rel, text in files.items():
                path = os.path.join(self.sysfs_usb_dir, port, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                try:
                    with open(path, encoding="utf-8") as f:
                        if f.read() == text + "\n":
                            continue
                except OSError:
                    pass
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text + "\n")

    def usb_backend(self) -> Any:
        from .usb_backend import SimulatedUsbBackend
        return SimulatedUsbBackend(self)

    def can_nodes(self, bustype: str = "virtual") -> Any:
        """A running set of simulated CAN nodes (stop it with ``.stop()`` or ``with``)."""
        from .can_nodes import SimulatedCanNodes
        return SimulatedCanNodes(self, bustype=bustype).start()

    def scan_options(self, listen_time: float = 0.2) -> Dict[str, Any]:
        """Keyword arguments that make ``discovery.scan`` look at this machine."""
        return {"usb_backend": self.usb_backend(), "usb_sysfs": self.sysfs_usb_dir,
                "by_id_dir": self.by_id_dir,
                "can_interfaces": self.can_interfaces_up, "can_bustype": "virtual",
                "can_listen_time": listen_time}

    def tool_paths(self) -> Dict[str, str]:
        """Paths of the dfu-util and flashtool.py doubles bound to this machine."""
        return {"dfu_util": self._wrapper("dfu-util", "dfu_util"),
                "flashtool": self._wrapper("flashtool.py", "flashtool"),
                "rp2040_flash": self._wrapper("rp2040_flash", "rp2040_flash")}

    def _wrapper(self, filename: str, module: str) -> str:
        path = os.path.join(self.bin_dir, filename)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        text = (f"#!{sys.executable}\n"
                "# Tool double bound to one simulated machine (written by SimulatedMachine).\n"
                "import os, sys\n"
                f"os.environ[{ENV_DIR!r}] = {self.directory!r}\n"
                f"sys.path.insert(0, {package_parent!r})\n"
                f"from moonraker_octoflash.sim.{module} import main\n"
                "sys.exit(main(sys.argv[1:]))\n")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        return path

    # --- the doubles' log ----------------------------------------------------
    def log_invocation(self, tool: str, argv: List[str]) -> None:
        line = json.dumps({"tool": tool, "argv": list(argv), "time": time.time(),
                           "pid": os.getpid()})
        with open(self.log_path, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(line + "\n")

    def tool_invocations(self, tool: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every run of a tool double so far (``tool``: dfu-util or flashtool); a run that
        only prints its help (``--help``) is not one."""
        try:
            with open(self.log_path, encoding="utf-8") as f:
                entries = [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []
        return [e for e in entries if tool is None or e["tool"] == tool]

    # --- Klipper, as far as the boards notice it -------------------------------
    @property
    def klipper_running(self) -> bool:
        return bool(self.config.get("klipper_running", True))

    def set_klipper_running(self, running: bool) -> None:
        """Klipper started: it claims every CAN node running Klipper (they stop
        answering the query).  Stopped: nodes keep their id until they reset."""
        self.update_config(lambda c: c.__setitem__("klipper_running", bool(running)))
        if running:
            for b in self.boards():
                if b.mode in ("klipper", "klipper-canbridge") and b.on_can:
                    b.update(lambda s: s.__setitem__("node_assigned", True))

    def klipper_mcu_status(self, board_name: str) -> Optional[Dict[str, Any]]:
        """What Klipper's ``mcu`` object would report for a board, if it runs Klipper."""
        fw = self.board(board_name).running_firmware()
        if fw is None or not self.klipper_running:
            return None
        return {"mcu_version": fw["version"], "mcu_build_versions": "sim",
                "mcu_constants": {"MCU": fw["mcu"]}}


class SimulatedBoard:
    """One board of a ``SimulatedMachine``; every read goes to disk."""

    def __init__(self, machine: SimulatedMachine, name: str) -> None:
        self.machine = machine
        self.name = name
        self.dir = os.path.join(machine.boards_dir, name)
        self.state_path = os.path.join(self.dir, "state.json")
        self.flash_path = os.path.join(self.dir, "flash.bin")

    def __repr__(self) -> str:
        return f"<SimulatedBoard {self.name} {self.mode}>"

    # --- state -------------------------------------------------------------------
    @property
    def state(self) -> Dict[str, Any]:
        return _read_json(self.state_path, {})

    def update(self, change: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
        with self.machine.lock():
            state = self.state
            change(state)
            _atomic_write_json(self.state_path, state)
        return state

    def _get(self, key: str) -> Any:
        return self.state.get(key)

    mcu = property(lambda self: self._get("mcu"))
    chip_id = property(lambda self: self._get("chip_id"))
    dfu_serial = property(lambda self: self._get("dfu_serial"))
    canbus_uuid = property(lambda self: self._get("canbus_uuid"))
    transport = property(lambda self: self._get("transport"))
    can_interface = property(lambda self: self._get("can_interface"))
    flash_size = property(lambda self: self._get("flash_size"))
    dfu_layout = property(lambda self: self._get("dfu_layout"))
    port_path = property(lambda self: self._get("port_path"))
    usb_address = property(lambda self: self._get("usb_address"))
    node_assigned = property(lambda self: bool(self._get("node_assigned")))

    def _fact(self, key: str) -> Any:
        """A fact fixed when the board was made (see ``_derived_facts``)."""
        state = self.state
        if key not in state:        # a board folder made before the state kept it
            state.update(_derived_facts(state))
        return state[key]

    @property
    def flash_base(self) -> int:
        """Where the chip's flash starts (from its MCU facts)."""
        return int(self._fact("flash_base"))

    @property
    def mode(self) -> str:
        """The mode now: ``booting`` until a reboot's delay has passed."""
        state = self.state
        if time.time() < float(state.get("ready_at", 0.0)):
            return "booting"
        return state.get("mode", "off")

    @property
    def on_can(self) -> bool:
        """Reached over CAN in its current mode (a CAN node, or a bridge running Klipper)."""
        mode = self.mode
        if self.transport == "can":
            return mode in ("klipper", "katapult")
        return mode == "klipper-canbridge"

    @property
    def tty_path(self) -> str:
        return os.path.join(self.machine.dev_dir, f"ttyACM{self._get('index')}")

    def by_id_name(self) -> Optional[str]:
        names = self._fact("by_id_names")
        return names.get(self.mode) if names else None

    def by_id_path(self) -> Optional[str]:
        name = self.by_id_name()
        return os.path.join(self.machine.by_id_dir, name) if name else None

    def usb_identity(self) -> Optional[Dict[str, Any]]:
        """The USB device the host sees for this board now, or None."""
        mode = self.mode
        state = self.state
        common = {"serial": state["chip_id"], "product": state["mcu"],
                  "address": state.get("usb_address", 0), "port_path": state["port_path"]}
        if mode == "bootsel":     # the RP2040/RP2350 boot ROM
            rp2350 = state["mcu"] == "rp2350"
            # The RP2040's boot ROM reports a 12-digit serial of its own, the same on
            # every board (it says nothing of the flash chip's id Klipper uses).
            return dict(common, id=USB_ID_BOOTSEL["rp2350" if rp2350 else "rp2040"],
                        manufacturer="Raspberry Pi", product="RP2 Boot",
                        serial=state["chip_id"] if rp2350 else RP2040_BOOT_ROM_SERIAL)
        if mode == "dfu":
            return dict(common, id=USB_ID_DFU, manufacturer="STMicroelectronics",
                        product="STM32  BOOTLOADER", serial=state["dfu_serial"],
                        dfu_layout=state["dfu_layout"])
        if self.transport != "usb":
            return None
        if mode == "katapult":
            return dict(common, id=USB_ID_KATAPULT, manufacturer="katapult")
        if mode == "klipper":
            return dict(common, id=USB_ID_KLIPPER, manufacturer="Klipper")
        if mode == "klipper-canbridge":
            return dict(common, id=USB_ID_CANBRIDGE, manufacturer="Klipper")
        return None

    # --- faults ----------------------------------------------------------------
    def set_fault(self, name: str, on: bool = True) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")

        def change(state: Dict[str, Any]) -> None:
            faults = set(state.get("faults", []))
            (faults.add if on else faults.discard)(name)
            state["faults"] = sorted(faults)
        self.update(change)

    def has_fault(self, name: str) -> bool:
        return name in self.state.get("faults", []) or name in self.machine.faults()

    # --- flash -----------------------------------------------------------------
    def layout(self) -> DfuLayout:
        from ..discovery.usb import parse_dfu_layout
        layout = parse_dfu_layout(self.dfu_layout)
        assert layout is not None, "simulated MCU without a flash layout"
        return layout

    def read_flash(self, address: int, length: int) -> bytes:
        offset = address - self.flash_base
        with open(self.flash_path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def regions(self) -> List[Dict[str, Any]]:
        return list(self.state.get("regions", []))

    def region_at(self, address: int) -> Optional[Dict[str, Any]]:
        for r in self.regions():
            if r["address"] == address:
                return r
        return None

    def bootloader(self) -> Optional[Dict[str, Any]]:
        """The bootloader in flash (Katapult or the stock one), or None."""
        region = self.region_at(self.flash_base)
        if region and region["kind"] in ("katapult", "stock-bootloader"):
            return region
        return None

    def mass_erase(self) -> None:
        with self.machine.lock():
            with open(self.flash_path, "r+b") as f:
                f.write(b"\xff" * self.flash_size)
            state = self.state
            state["regions"] = []
            _atomic_write_json(self.state_path, state)

    def erase(self, address: int, length: int) -> None:
        """Erase every sector the range touches, as DfuSe and Katapult do."""
        with self.machine.lock():
            self._erase_locked(address, length)

    def _sectors_touching(self, address: int, length: int) -> List[Tuple[int, int]]:
        end = address + max(length, 1)
        found = []
        for first, size, count in self._fact("sector_runs"):
            for start in range(first, first + size * count, size):
                if start < end and start + size > address:
                    found.append((start, size))
        return found

    def _erase_locked(self, address: int, length: int) -> None:
        sectors = self._sectors_touching(address, length)
        with open(self.flash_path, "r+b") as f:
            for start, size in sectors:
                f.seek(start - self.flash_base)
                f.write(b"\xff" * size)
        state = self.state
        state["regions"] = [r for r in state.get("regions", [])
                            if not any(r["address"] < s + n and r["address"] + r["size"] > s
                                       for s, n in sectors)]
        _atomic_write_json(self.state_path, state)

    def write_flash(self, address: int, data: bytes, *, name: str, erase: bool = True,
                    complete: bool = True, kind: Optional[str] = None) -> None:
        """Program ``data`` at ``address``; ``complete=False`` for a write cut short
        (the bytes land, but nothing bootable is recorded)."""
        end = address + len(data)
        if address < self.flash_base or end > self.flash_base + self.flash_size:
            raise ValueError(f"write 0x{address:08x}..0x{end:08x} is outside the flash")
        with self.machine.lock():
            if erase:
                self._erase_locked(address, len(data))
            with open(self.flash_path, "r+b") as f:
                f.seek(address - self.flash_base)
                f.write(data)
            state = self.state
            if complete:
                info: Dict[str, Any] = {"kind": kind} if kind else \
                    classify_image(data, name, state["mcu"])
                if info["kind"] == "katapult" and address != self.flash_base:
                    info = {"kind": "data"}
                info.update({"address": address, "size": len(data),
                             "name": os.path.basename(name),
                             "sha256": _sha256(data)})
                state["regions"] = [r for r in state.get("regions", [])
                                    if not (r["address"] < end and r["address"] + r["size"] > address)]
                state["regions"].append(info)
                state["regions"].sort(key=lambda r: r["address"])
            state["history"] = (state.get("history", []) + [
                {"time": time.time(), "event": "write", "address": address,
                 "size": len(data), "name": os.path.basename(name),
                 "complete": complete}])[-HISTORY_KEPT:]
            _atomic_write_json(self.state_path, state)

    # --- what runs ---------------------------------------------------------------
    def _app_mode(self, region: Optional[Dict[str, Any]]) -> Optional[str]:
        if region is None or region.get("kind") != "klipper":
            return None
        if region.get("mcu") and region["mcu"] != self.mcu:
            return "off"        # built for another chip: it never starts
        return "klipper-canbridge" if region.get("bridge") else "klipper"

    def _boot_target(self) -> str:
        bl = self.bootloader()
        if bl is not None and bl["kind"] == "katapult":
            app = self.region_at(int(bl.get("app_start", default_app_start(self.mcu))))
            if app is not None and app["kind"] == "deployer":
                self._run_deployer(bl, app)
                return "katapult"
            return self._app_mode(app) or "katapult"
        if bl is not None:
            return self._app_mode(self.region_at(STOCK_APP_START)) or "off"
        return self._app_mode(self.region_at(self.flash_base)) or "off"

    def _run_deployer(self, bootloader: Dict[str, Any], deployer: Dict[str, Any]) -> None:
        """Katapult's deployer rewrites the bootloader, then erases itself."""
        image = _fake_katapult(int(deployer.get("app_start", bootloader["app_start"])),
                               "deployed")
        self.write_flash(self.flash_base, image, name="katapult.bin")
        self.erase(deployer["address"], deployer["size"])

    def set_mode(self, mode: str, *, delay: Optional[float] = None) -> None:
        """Switch mode (a re-enumeration: new USB address, CAN node id cleared)."""
        if mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)}")
        address = self.machine._allocate("next_usb_address") % 120 + 2

        def change(state: Dict[str, Any]) -> None:
            wait = state.get("boot_delay", 0.0) if delay is None else delay
            state["mode"] = mode
            state["ready_at"] = time.time() + wait
            state["usb_address"] = address
            state["node_assigned"] = False
            state["history"] = (state.get("history", []) + [
                {"time": time.time(), "event": "mode", "mode": mode}])[-HISTORY_KEPT:]
        self.update(change)
        self.machine.sync_links()
        announce_devices(self.machine.directory)     # gone (or, without a delay, back)

    def reset(self, *, delay: Optional[float] = None) -> str:
        """Press reset: run what the flash holds.  Returns the new mode."""
        target = self._boot_target()
        if self.has_fault("no_return") and target != "katapult":
            target = "off"
        self.set_mode(target, delay=delay)
        return target

    def enter_bootloader(self) -> str:
        """What Klipper does on a bootloader request (CAN admin 0x02, 1200 baud)."""
        if self.has_fault("no_bootloader_request"):
            return self.mode
        bl = self.bootloader()
        if bl is not None and bl["kind"] == "katapult":
            self.set_mode("katapult")
        elif self.mcu.startswith("rp2"):
            self.set_mode("bootsel")    # Klipper's rp2040 bootloader_request: the boot ROM
        elif not self.mcu.startswith("stm32f429"):
            self.set_mode("dfu")        # Klipper falls back to the ROM loader
        return self.mode

    def enter_dfu(self) -> None:
        """Boot jumper fitted, reset pressed."""
        self.set_mode("dfu", delay=0.0)

    def double_reset(self) -> str:
        bl = self.bootloader()
        if bl is not None and bl["kind"] == "katapult":
            self.set_mode("katapult")
            return "katapult"
        return self.reset()

    def running_firmware(self) -> Optional[Dict[str, Any]]:
        """Version and MCU of the Klipper running now, or None."""
        if self.mode not in ("klipper", "klipper-canbridge"):
            return None
        bl = self.bootloader()
        if bl is not None and bl["kind"] == "katapult":
            region = self.region_at(int(bl["app_start"]))
        elif bl is not None:
            region = self.region_at(STOCK_APP_START)
        else:
            region = self.region_at(self.flash_base)
        if region is None:
            return None
        return {"version": region.get("version", ""), "mcu": region.get("mcu", ""),
                "address": region["address"]}

    def katapult_app_start(self) -> Optional[int]:
        bl = self.bootloader()
        if bl is None or bl["kind"] != "katapult":
            return None
        return int(bl.get("app_start", default_app_start(self.mcu)))

    def katapult_version(self) -> str:
        bl = self.bootloader() or {}
        return str(bl.get("version") or "v0.0.1-110-gb0bf421")


def _fake_katapult(app_start: int, version: str) -> bytes:
    """A stand-in Katapult image: recognisable, small, with its app start marked."""
    body = (f"KATAPULT {version} OCTOFLASH-SIM:app_start=0x{app_start:08x}".encode())
    return body.ljust(0x2000, b"\0")


def make_klipper_image(mcu: str, version: str, *, bridge: bool = False,
                       canbus: bool = False, size: int = 24 * 1024) -> bytes:
    """A stand-in klipper.bin: code-like bytes with Klipper's data dictionary inside."""
    import zlib
    config: Dict[str, Any] = {"MCU": mcu, "CLOCK_FREQ": 180000000}
    if bridge:
        config["CANBUS_BRIDGE"] = 1
    if bridge or canbus:
        config["CANBUS_FREQUENCY"] = 1000000
    dictionary = zlib.compress(json.dumps(
        {"app": "Klipper", "version": version, "config": config,
         "build_versions": "gcc: (sim) binutils: (sim)"}).encode())
    seed = bytes.fromhex(_sha256(f"{mcu}{version}{bridge}".encode()))
    code = (seed * (size // len(seed) + 1))[:size // 2]
    image = code + dictionary
    return image + bytes((i * 7) & 0xFF for i in range(max(0, size - len(image))))
