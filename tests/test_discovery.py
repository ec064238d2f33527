"""Discovery through pyusb's backend interface, python-can's virtual bus and Klipper's status."""
from __future__ import annotations

import asyncio
import os
import time

import usb.core
import usb.util

from fixtures_flash import ebb_profile, octopus_profile
from moonraker_octoflash.discovery import scan
from moonraker_octoflash.discovery.can import (parse_query_answer, query_interface,
                                               send_bootloader_request, system_can_interfaces)
from moonraker_octoflash.discovery.identity import canbus_uuid_from_chip_id, dfu_serial_from_chip_id
from moonraker_octoflash.discovery.klipper import find_mcu, klipper_mcus
from moonraker_octoflash.discovery.serial import parse_by_id_name
from moonraker_octoflash.discovery.snapshot import DeviceSnapshot
from moonraker_octoflash.discovery.usb import parse_dfu_layout

CHIP = "2C0033000851363131363530"


def test_chip_id_gives_the_uuid_klipper_and_katapult_answer_with():
    # Reference value computed with Katapult's own convert_usbsn_to_uuid().
    assert canbus_uuid_from_chip_id(CHIP) == "c26f3d91d861"
    assert canbus_uuid_from_chip_id("not hex") is None
    # ST's formula: words 0x0033002C + 0x30353631 -> 3068365D, top of 0x31365108 -> 3136
    assert dfu_serial_from_chip_id(CHIP) == "3068365D3136"


def test_dfu_layout_gives_sectors_and_size():
    f446 = parse_dfu_layout("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg")
    assert f446 is not None and f446.size == 512 * 1024
    assert f446.sectors[4] == (0x08010000, 64 * 1024)
    assert [a for a, _ in f446.sectors_touching(0x08008000, 0x9000)] == [0x08008000, 0x0800C000,
                                                                         0x08010000]
    h723 = parse_dfu_layout("@Internal Flash   /0x08000000/8*128Kg")
    assert h723 is not None and h723.size == 1024 * 1024
    assert parse_dfu_layout("@Option Bytes  /0x1FFFC000/01*016 e").size == 16
    assert parse_dfu_layout("STM32 BOOTLOADER") is None


def test_by_id_names():
    assert parse_by_id_name(f"usb-Klipper_stm32f446xx_{CHIP}-if00") == ("klipper", "stm32f446xx", CHIP)
    assert parse_by_id_name(f"usb-katapult_stm32h723xx_{CHIP}-if00") == ("katapult", "stm32h723xx", CHIP)
    assert parse_by_id_name("usb-FTDI_FT232R_USB_UART_A10K5Z2M-if00-port0")[0] == "other"


def test_pyusb_sees_the_simulated_boards_with_real_ids_and_strings(machine):
    machine.add_board("dfu", "stm32f446xx", bootloader=None, mode="dfu", chip_id=CHIP)
    machine.add_board("kat", "stm32f429xx", mode="katapult")
    backend = machine.usb_backend()
    found = {(d.idVendor, d.idProduct): d for d in usb.core.find(find_all=True, backend=backend)}
    dfu = found[(0x0483, 0xDF11)]
    assert dfu.manufacturer == "STMicroelectronics"
    assert dfu.serial_number == "3068365D3136"
    alt_names = [usb.util.get_string(dfu, intf.iInterface) for intf in dfu.get_active_configuration()]
    assert alt_names[0] == "@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg"
    kat = found[(0x1D50, 0x6177)]
    assert (kat.manufacturer, kat.product) == ("katapult", "stm32f429xx")


async def test_scan_reports_usb_serial_and_matching(machine):
    octo = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0", "bridge": True},
                             chip_id=CHIP)
    ser = machine.add_board("serial", "stm32f407xx", firmware={"version": "v0.12.0"})
    machine.add_board("dfu", "stm32h723xx", bootloader=None, mode="dfu")
    snap = await scan(**dict(machine.scan_options(), can=False))
    kinds = sorted(d.kind for d in snap.usb)
    assert kinds == ["canbridge", "dfu", "klipper"]
    bridge = snap.usb_of_kind("canbridge")[0]
    assert bridge.canbus_uuid == "c26f3d91d861" == octo.canbus_uuid
    assert bridge.mcu == "stm32f446xx" and bridge.serial_paths == []
    klipper = snap.usb_of_kind("klipper")[0]
    assert klipper.serial_paths == [os.path.join(machine.by_id_dir,
                                                 f"usb-Klipper_stm32f407xx_{ser.chip_id}-if00")]
    dfu = snap.dfu_devices()[0]
    assert dfu.flash_size == 1024 * 1024 and dfu.dfu_layout.endswith("8*128Kg")
    assert snap.to_json()["usb"][0]["usb_id"] in ("1d50:606f", "1d50:614e", "0483:df11")


async def test_can_nodes_answer_the_admin_query_as_klipper_and_katapult(machine, can_nodes):
    machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0", "bridge": True})
    th = machine.add_board("toolhead", "stm32f446xx", transport="can",
                           firmware={"version": "v0.12.0"})
    kat = machine.add_board("ebb", "stm32g0b1xx", transport="can", mode="katapult")
    snap = await scan(**machine.scan_options(listen_time=0.2))
    assert [i.name for i in snap.can_interfaces] == ["can0"]
    apps = {n.uuid: n.application for n in snap.can_nodes}
    assert apps[th.canbus_uuid] == "Klipper"
    assert apps[kat.canbus_uuid] == "Katapult"
    assert len(apps) == 3          # the bridge itself is a node on its own bus


async def test_a_scan_that_expects_a_node_stops_listening_once_it_answered(machine, can_nodes):
    machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0", "bridge": True})
    th = machine.add_board("toolhead", "stm32f446xx", transport="can",
                           firmware={"version": "v0.12.0"})
    machine.add_board("ebb", "stm32g0b1xx", transport="can", mode="katapult")
    # A 30 s window: only the expected node's answer ends it this early.
    start = time.monotonic()
    snap = await scan(can_expect=[th.canbus_uuid], **machine.scan_options(listen_time=30.0))
    assert time.monotonic() - start < 15.0
    assert snap.can_node(th.canbus_uuid).application == "Klipper"


async def test_a_node_claimed_by_running_klipper_stays_silent(machine, can_nodes):
    machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0", "bridge": True})
    th = machine.add_board("toolhead", "stm32f446xx", transport="can", firmware={"version": "v0"})
    machine.set_klipper_running(True)
    snap = await scan(**machine.scan_options(listen_time=0.2))
    assert snap.can_node(th.canbus_uuid) is None
    # Klipper's config still names it, so the profile shows as running through Klipper.
    status = {"mcu toolhead": {"mcu_version": "v0", "mcu_constants": {"MCU": "stm32f446xx"}},
              "configfile": {"settings": {"mcu toolhead": {"canbus_uuid": th.canbus_uuid}}}}
    snap = await scan(klipper_status=status, **machine.scan_options(listen_time=0.1))
    state = snap.status_of(ebb_profile(th.canbus_uuid, name="toolhead"))
    assert state.state == "running" and "Klipper reports mcu toolhead" in state.detail


def test_bootloader_request_sends_a_bridge_to_katapult_on_usb(machine, can_nodes):
    octo = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v0.12.0", "bridge": True})
    assert machine.can_interfaces_up() == ["can0"]
    send_bootloader_request("can0", octo.canbus_uuid, bustype="virtual")
    katapult_port = f"usb-katapult_stm32f446xx_{octo.chip_id}-if00"
    # The board reboots into Katapult; its by-id link appears once it has
    # enumerated (the simulation's udev, a thread of its own): wait for both.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (
            octo.mode == "katapult" and os.listdir(machine.by_id_dir) == [katapult_port]):
        time.sleep(0.02)
    assert octo.mode == "katapult"
    assert machine.can_interfaces_up() == []          # the bridge took can0 with it
    assert os.listdir(machine.by_id_dir) == [katapult_port]


def test_query_answers_are_parsed_like_klipper_does():
    assert parse_query_answer(bytes([0x20]) + bytes.fromhex("c26f3d91d861") + b"\x11") == \
        ("c26f3d91d861", "Katapult")
    # Older Klipper answers with 7 bytes: taken as Klipper.
    assert parse_query_answer(bytes([0x20]) + bytes.fromhex("c26f3d91d861")) == ("c26f3d91d861", "Klipper")
    assert parse_query_answer(b"\x21\x00") is None


def test_query_on_an_empty_bus_finds_nothing_within_the_window():
    start = time.monotonic()
    nodes, warnings = query_interface("empty-bus", bustype="virtual", listen_time=0.15)
    assert nodes == [] and warnings == []
    # it listened the whole window, and then ended (the upper bound only
    # catches a query that never ends; speed is bench_discovery.py's)
    assert 0.14 < time.monotonic() - start < 10.0


def test_query_on_a_missing_socketcan_interface_is_a_warning():
    nodes, warnings = query_interface("can7", bustype="socketcan", listen_time=0.05)
    assert nodes == [] and warnings and warnings[0].startswith("can7: cannot open")


def test_can_interfaces_come_from_sysfs_type_280(tmp_path):
    def iface(name, type_, flags, oper, qlen="10"):
        d = tmp_path / name
        d.mkdir()
        (d / "type").write_text(f"{type_}\n")
        (d / "flags").write_text(f"{flags}\n")
        (d / "operstate").write_text(f"{oper}\n")
        (d / "tx_queue_len").write_text(f"{qlen}\n")
    iface("can0", 280, "0x40081", "up", "128")
    iface("can1", 280, "0x80", "down")
    iface("eth0", 1, "0x1003", "up")
    found = system_can_interfaces(str(tmp_path))
    assert [(i.name, i.up, i.txqueuelen) for i in found] == [("can0", True, 128), ("can1", False, 10)]


def test_klipper_status_gives_each_mcu_and_its_board():
    status = {
        "mcu": {"mcu_version": "v0.13.0-730-g84104bbbd", "mcu_constants": {"MCU": "stm32f446xx"}},
        "mcu toolhead": {"mcu_version": "", "mcu_constants": {}},
        "configfile": {"settings": {
            "mcu": {"canbus_uuid": "C26F3D91D861"},
            "mcu toolhead": {"canbus_uuid": "aabbccddeeff", "canbus_interface": "can1"},
            "mcu extra": {"serial": "/dev/serial/by-id/usb-Klipper_rp2040_E66-if00"}}},
    }
    mcus = {m.name: m for m in klipper_mcus(status)}
    assert mcus["mcu"].connected and mcus["mcu"].mcu_type == "stm32f446xx"
    assert mcus["mcu"].canbus_uuid == "c26f3d91d861" and mcus["mcu"].canbus_interface == "can0"
    assert not mcus["toolhead"].connected and mcus["toolhead"].canbus_interface == "can1"
    assert mcus["extra"].serial.endswith("E66-if00") and mcus["extra"].mcu_version is None


# configfile as a real Klipper reports [mcu Toolhead] (tests/test_real_klipper.py):
# settings lower-cased with the defaults Klipper used, config and objects as written.
KLIPPER_CONFIGFILE = {
    "settings": {"mcu": {"canbus_uuid": "c26f3d91d861", "canbus_interface": "can0"},
                 "mcu toolhead": {"serial": "/dev/serial/by-id/usb-Klipper_x-if00", "baud": 250000}},
    "config": {"mcu": {"canbus_uuid": "c26f3d91d861"},
               "mcu Toolhead": {"serial": "/dev/serial/by-id/usb-Klipper_x-if00"}},
}


def _names(status):
    return [(m.object_name, m.name, m.connected) for m in klipper_mcus(status)]


def test_a_klipper_mcu_is_named_after_its_object_not_the_lower_cased_settings():
    ready = {"mcu": {"mcu_version": "v1"}, "mcu Toolhead": {"mcu_version": "v1"},
             "configfile": KLIPPER_CONFIGFILE}
    assert _names(ready) == [("mcu", "mcu", True), ("mcu Toolhead", "Toolhead", True)]
    toolhead = klipper_mcus(ready)[1]
    assert toolhead.serial == "/dev/serial/by-id/usb-Klipper_x-if00"
    # startup, Toolhead unreachable: Klipper lists the object and reports it empty
    startup = {"mcu": {"mcu_version": "v1"}, "mcu Toolhead": {},
               "configfile": KLIPPER_CONFIGFILE}
    assert _names(startup) == [("mcu", "mcu", True), ("mcu Toolhead", "Toolhead", False)]
    # Klipper gone (only the config kept): config spells the name
    assert _names({"configfile": KLIPPER_CONFIGFILE}) == \
        [("mcu", "mcu", False), ("mcu Toolhead", "Toolhead", False)]
    # settings alone (a reader that asked for no config) cannot know better
    assert _names({"configfile": {"settings": KLIPPER_CONFIGFILE["settings"]}}) == \
        [("mcu", "mcu", False), ("mcu toolhead", "toolhead", False)]
    # a config error: Klipper stops before it builds settings; config still tells the board
    errored = klipper_mcus({"configfile": {"settings": {}, "config": KLIPPER_CONFIGFILE["config"]}})
    assert errored[0].canbus_uuid == "c26f3d91d861" and errored[0].canbus_interface == "can0"
    assert errored[1].serial == "/dev/serial/by-id/usb-Klipper_x-if00"


def test_a_profile_names_its_klipper_mcu_in_any_case():
    mcus = klipper_mcus({"mcu": {}, "mcu Toolhead": {}, "configfile": KLIPPER_CONFIGFILE})
    for name in ("Toolhead", "toolhead", "TOOLHEAD", "mcu toolhead", "mcu Toolhead"):
        assert find_mcu(mcus, name).object_name == "mcu Toolhead", name
    assert find_mcu(mcus, "mcu").object_name == "mcu"
    assert find_mcu(mcus, "toolhead2") is None and find_mcu(mcus, None) is None


def test_the_snapshot_finds_a_profiles_board_by_name_in_any_case():
    # printer.cfg says [mcu Toolhead]; the profile says klipper_mcu: toolhead
    # and nothing else that would identify the board (no uuid, no serial).
    status = {"mcu": {"mcu_version": "v1", "mcu_constants": {"MCU": "stm32f446xx"}},
              "mcu Toolhead": {"mcu_version": "v2", "mcu_constants": {"MCU": "stm32h723xx"}},
              "configfile": KLIPPER_CONFIGFILE}
    snap = DeviceSnapshot(klipper_mcus=klipper_mcus(status))
    toolhead = octopus_profile("toolhead", "btt-octopus-h723-canbridge", klipper_mcu="toolhead")
    assert snap.klipper_mcu_for(toolhead).object_name == "mcu Toolhead"
    state = snap.status_of(toolhead)
    assert state.state == "running"
    assert state.detail == "Klipper reports mcu Toolhead running v2 (stm32h723xx)"
    assert snap.klipper_mcu("TOOLHEAD").mcu_version == "v2"
    assert snap.klipper_mcu("mcu").mcu_version == "v1"
    assert snap.status_of(octopus_profile("other", klipper_mcu="toolhead2")).state == "not_found"


async def test_each_profile_is_running_bootloader_dfu_or_not_found(machine, can_nodes):
    octo = machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    th = machine.add_board("toolhead", "stm32g0b1xx", transport="can", mode="katapult")
    dfu = machine.add_board("spare", "stm32f429xx", bootloader=None, mode="dfu")
    snap = await scan(**machine.scan_options(listen_time=0.2))
    assert snap.status_of(octopus_profile(canbus_uuid=octo.canbus_uuid)).state == "running"
    assert snap.status_of(ebb_profile(th.canbus_uuid)).state == "bootloader"
    spare = octopus_profile("spare", "btt-octopus-f429-canbridge-nobootloader",
                            dfu_serial=dfu.dfu_serial)
    assert snap.status_of(spare).state == "dfu"
    assert snap.status_of(octopus_profile("gone", canbus_uuid="0123456789ab")).state == "not_found"
    octo.double_reset()
    snap = await scan(**machine.scan_options(listen_time=0.1))
    state = snap.status_of(octopus_profile(canbus_uuid=octo.canbus_uuid))
    assert state.state == "bootloader" and "Katapult on USB" in state.detail


async def test_scan_never_blocks_the_event_loop(machine, can_nodes):
    machine.add_board("octopus", "stm32f446xx", firmware={"version": "v1", "bridge": True})
    ticks = []

    async def ticker():
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)
    task = asyncio.create_task(ticker())
    await scan(**machine.scan_options(listen_time=1.0))
    task.cancel()
    # Blocking work in the loop would show as one gap as long as the 1 s CAN
    # window, far above what a busy machine's scheduling makes of a 10 ms
    # sleep; speed itself is measured by bench/bench_discovery.py.
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 10 and max(gaps) < 0.5


async def test_scan_of_this_machine_with_the_real_backends_says_what_it_lacks(tmp_path):
    snap = await scan(by_id_dir=str(tmp_path / "no-such-dir"), can_listen_time=0.1)
    assert snap.dfu_devices() == [] and snap.serial_ports == []
    for warning in snap.warnings:      # e.g. no libusb: the message says what to install
        assert "libusb" in warning or "CAN" in warning or "can" in warning


# Chip id -> the ROM DFU loader's serial.  No public capture showing both for one board
# was found, so these expectations are worked by hand from ST's Get_SerialNum (word0 +
# word2 as 8 hex digits, then the top 4 digits of word1, words little-endian); the
# derivation is unverified against a real board (docs/flashing.md).  The first chip id is
# from a public klipper.discourse.group post (an F446's usb-Klipper_… name).
DFU_SERIAL_BY_HAND = [
    ("44002B000B50563046363120", "205C368A3056"),
    ("2C0033000851363131363530", "3068365D3136"),
    ("000000000000000000000000", "000000000000"),
    ("FFFFFFFFFFFFFFFF01000000", "00000000FFFF"),   # word0 + word2 wraps at 32 bits
]


def test_dfu_serial_from_chip_id_matches_the_hand_worked_values():
    for chip, serial in DFU_SERIAL_BY_HAND:
        assert dfu_serial_from_chip_id(chip) == serial, chip


def test_the_simulated_rom_loader_agrees_with_discovery_on_many_chip_ids(machine):
    # Two implementations written apart (sim/board.py's follows ST's code nibble by nibble).
    import random
    from moonraker_octoflash.sim.board import _rom_dfu_serial
    rng = random.Random(13)
    chips = ["".join(rng.choice("0123456789ABCDEF") for _ in range(24)) for _ in range(2000)]
    assert [c for c in chips if _rom_dfu_serial(c) != dfu_serial_from_chip_id(c)] == []
    for chip, serial in DFU_SERIAL_BY_HAND:
        assert _rom_dfu_serial(chip) == serial
