"""Fixtures for the flash and discovery tests: a simulated machine, artifacts, profiles."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import textwrap
import time
from typing import Any, Callable, Dict, List, Optional

import pytest

from moonraker_octoflash.artifacts import Artifact, ArtifactFile, ArtifactStore
from moonraker_octoflash.discovery import scan
from moonraker_octoflash.events import Progress
from moonraker_octoflash.flash.config import FlashConfig, PhaseTimeouts
from moonraker_octoflash.flash.executor import FlashContext
from moonraker_octoflash.presets import Preset, get_preset
from moonraker_octoflash.profiles import Profile, profile_from_json
from moonraker_octoflash.sim.board import SimulatedMachine, make_klipper_image
from moonraker_octoflash.sim.klipper_service import SimulatedKlipperService

# A CAN toolhead is not one of the Octopus presets; tests build its preset by hand.
EBB_PRESET = Preset(
    id="test-ebb-g0b1", title="Test CAN toolhead (STM32G0B1)", board="Test toolhead",
    target="klipper", mcu="stm32g0b1xx", app_address=0x08002000,
    description="CAN toolhead behind the bridge, Katapult with an 8 KiB offset",
    kconfig={"CONFIG_MACH_STM32": "y", "CONFIG_MACH_STM32G0B1": "y",
             "CONFIG_STM32_FLASH_START_2000": "y", "CONFIG_STM32_CMENU_CANBUS_PB0_PB1": "y",
             "CONFIG_CANBUS_FREQUENCY": "1000000"},
    flash_methods=({"method": "katapult"},), dfu_instructions="Hold BOOT, press RESET.")


def write_artifact(directory: str, *, profile: str, preset: str, target: str = "klipper",
                   mcu: str = "stm32f446xx", app_address: int = 0x08008000,
                   version: str = "v0.13.0-5-gabc", bridge: bool = True,
                   image: Optional[bytes] = None, name: Optional[str] = None,
                   extra_files: Optional[Dict[str, bytes]] = None,
                   bootloader_app_start: Optional[int] = None,
                   dict_mcu: Optional[str] = None) -> Artifact:
    """An artifact record made by hand, with its files on disk (no Builder involved)."""
    os.makedirs(directory, exist_ok=True)
    files: List[ArtifactFile] = []
    main = name or ("klipper.bin" if target == "klipper" else "katapult.bin")
    if image is None:
        if target == "klipper":
            image = make_klipper_image(dict_mcu or mcu, version, bridge=bridge)
        else:
            image = (b"KATAPULT test OCTOFLASH-SIM:app_start=0x%08x" %
                     (bootloader_app_start or 0x08008000)).ljust(8192, b"\0")
    contents = {main: image}
    contents.update(extra_files or {})
    for fname, data in contents.items():
        with open(os.path.join(directory, fname), "wb") as f:
            f.write(data)
        files.append(ArtifactFile(name=fname, size=len(data),
                                  sha256=hashlib.sha256(data).hexdigest()))
    return Artifact(id=time.strftime("%Y%m%d-%H%M%S"), profile=profile, preset=preset,
                    target=target, mcu=mcu, app_address=app_address, source_version=version,
                    config_sha256="0" * 64, files=files, created=time.time(),
                    directory=directory, bootloader_app_start=bootloader_app_start,
                    dict_mcu=(dict_mcu or mcu) if target == "klipper" else None,
                    dict_version=version if target == "klipper" else None)


@pytest.fixture
def machine(tmp_path: Any) -> SimulatedMachine:
    m = SimulatedMachine(str(tmp_path / "sim"))
    m.tool_delay = 0.02
    return m


@pytest.fixture
def can_nodes(machine: SimulatedMachine) -> Any:
    nodes = machine.can_nodes()
    yield nodes
    nodes.stop()


@pytest.fixture
def artifact_dir(tmp_path: Any) -> Callable[[str], str]:
    def make(name: str) -> str:
        return str(tmp_path / "artifacts" / name)
    return make


def octopus_profile(name: str = "octopus", preset: str = "btt-octopus-f446-canbridge",
                    **options: Any) -> Profile:
    data: Dict[str, Any] = {"name": name, "preset": preset}
    data.update(options)
    return profile_from_json(data, source="cli")


def ebb_profile(uuid: str, name: str = "ebb") -> Profile:
    return Profile(name=name, preset=EBB_PRESET, klipper_mcu="ebb", canbus_uuid=uuid,
                   canbus_interface="can0", source="cli")


@dataclasses.dataclass
class FlashRig:
    """A simulated machine with everything a flash needs wired to it."""
    machine: SimulatedMachine
    config: FlashConfig
    service: SimulatedKlipperService
    events: List[Progress]
    klipper_status: Optional[Dict[str, Any]] = None

    def context(self, *, with_discovery: bool = True, **kw: Any) -> FlashContext:
        options = self.machine.scan_options(listen_time=0.1)

        async def discover() -> Any:
            return await scan(klipper_status=self.klipper_status, **options)
        return FlashContext(service=self.service, on_progress=self.events.append,
                            discover=discover if with_discovery else None, **kw)

    async def scan(self) -> Any:
        return await scan(klipper_status=self.klipper_status,
                          **self.machine.scan_options(listen_time=0.1))

    def writes(self) -> List[Dict[str, Any]]:
        """Tool invocations that could write (flashtool -f, dfu-util -D)."""
        found = []
        for entry in self.machine.tool_invocations():
            argv = entry["argv"]
            if ("-D" in argv and entry["tool"] == "dfu-util") or (
                    entry["tool"] == "flashtool" and not {"-r", "-s", "-q"} & set(argv)):
                found.append(entry)
        return found


@pytest.fixture
def rig(machine: SimulatedMachine, can_nodes: Any) -> FlashRig:
    timeouts = PhaseTimeouts(stop_klipper=5, start_klipper=5, request_bootloader=10,
                             bootloader_wait=3, device_wait=2, status=10, write=20,
                             reconnect=3, version_check=2)
    config = FlashConfig(python=os.environ.get("PYTHON", __import__("sys").executable),
                         timeouts=timeouts, poll_interval=0.05,
                         by_id_dir=machine.by_id_dir).with_tools(machine.tool_paths())
    return FlashRig(machine=machine, config=config,
                    service=SimulatedKlipperService(machine), events=[])


__all__ = ["write_artifact", "octopus_profile", "ebb_profile", "EBB_PRESET", "FlashRig",
           "get_preset"]


def cli_printer(tmp_path: Any, machine: SimulatedMachine) -> Dict[str, Any]:
    """What the command line finds on a printer: an Octopus USB-CAN bridge and a
    CAN toolhead on the simulated machine, a build of each, and the
    ``printer_data/config/moonraker.conf`` naming them.  Returns ``conf``,
    ``data`` (the printer_data folder), ``octo``, ``head`` and ``store``."""
    octo = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    head = machine.add_board("toolhead", "stm32f446xx", transport="can", firmware={"version": "v1"})
    data = tmp_path / "printer_data"
    (data / "config").mkdir(parents=True)
    build = data / "octoflash"
    store = ArtifactStore(str(build), keep=3)
    config_file = tmp_path / "config.cfg"
    config_file.write_text("CONFIG_MACH_STM32=y\n")
    for name, bridge in (("octopus", True), ("toolhead", False)):
        image = tmp_path / f"{name}.bin"
        image.write_bytes(make_klipper_image("stm32f446xx", "v0.13.0-5-gabc", bridge=bridge))
        store.add(profile=name, preset="btt-octopus-f446-canbridge", target="klipper",
                  mcu="stm32f446xx", app_address=0x08008000, source_version="v0.13.0-5-gabc",
                  files={"klipper.bin": str(image)}, config_path=str(config_file),
                  dict_mcu="stm32f446xx", dict_version="v0.13.0-5-gabc")
    conf = data / "config" / "moonraker.conf"
    conf.write_text(textwrap.dedent(f"""\
        [octoflash]
        build_path: {build}
        machine: moonraker_octoflash.sim.machine:open_machine {machine.directory}
        can_listen_time: 0.1
        reconnect_timeout: 5

        [octoflash octopus]
        preset: btt-octopus-f446-canbridge
        canbus_uuid: {octo.canbus_uuid}
        klipper_mcu: mcu

        [octoflash toolhead]
        preset: btt-octopus-f446-canbridge
        canbus_uuid: {head.canbus_uuid}
        klipper_mcu: toolhead
        kconfig:
          CONFIG_STM32_USBCANBUS_PA11_PA12=n
          CONFIG_STM32_CMENU_CANBUS_PD0_PD1=n
          CONFIG_STM32_MMENU_CANBUS_PD0_PD1=y
        """))
    return {"conf": str(conf), "data": str(data), "octo": octo, "head": head, "store": store}
