"""A wait for a USB board ends when the board is announced, not at the next probe.

* The kernel's and udev's messages (``discovery.uevents``) for USB devices,
  serial ports and network interfaces wake a wait; others do not.
* A real netlink socket hears a real kernel announcement here (the test
  makes the kernel announce its loopback interface again, which needs root).
* An interface that goes up or down (a bridge's ``can0`` brought up by the
  host) is heard on the route socket; a real kernel's interface message
  wakes a wait.
* A flash of the simulated Octopus (USB-CAN bridge through Katapult) with a
  probe interval longer than its timeouts still succeeds: each wait (Katapult's
  serial port, the bridge back) ends on the machine's announcement alone.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import struct

import pytest

from fixtures_flash import octopus_profile, write_artifact
from moonraker_octoflash.discovery.uevents import (DeviceEvents, announces_device_change,
                                                   announces_link_change, device_events,
                                                   open_link_socket)
from moonraker_octoflash.flash.pipeline import CoreFlashPipeline
from moonraker_octoflash.sim.machine import SimulatedMachineSeam

# What the kernel sends when a board's serial port appears, and udev's message for it
# once the by-id link is made (written here after the formats: "ACTION@DEVPATH", then
# KEY=VALUE pairs, each ended by a NUL; udev's starts with "libudev" and a binary header).
TTY_ADD = (b"add@/devices/platform/soc/usb1/1-1/1-1.3/1-1.3:1.0/tty/ttyACM0\0ACTION=add\0"
           b"DEVPATH=/devices/platform/soc/usb1/1-1/1-1.3/1-1.3:1.0/tty/ttyACM0\0"
           b"SUBSYSTEM=tty\0MAJOR=166\0MINOR=0\0DEVNAME=ttyACM0\0SEQNUM=4711\0")
UDEV_TTY = (b"libudev\0\xfe\xed\xca\xfe(\0\0\0(\0\0\0\x90\0\0\0" + b"\0" * 16 +
            b"ACTION=add\0DEVPATH=/devices/platform/soc/usb1/1-1/1-1.3/1-1.3:1.0/tty/ttyACM0\0"
            b"SUBSYSTEM=tty\0DEVNAME=/dev/ttyACM0\0DEVLINKS=/dev/serial/by-id/usb-katapult_"
            b"stm32f446xx_300000000000000000000000-if00\0")
USB_ADD = (b"add@/devices/platform/soc/usb1/1-1/1-1.3\0ACTION=add\0SUBSYSTEM=usb\0"
           b"DEVTYPE=usb_device\0PRODUCT=1d50/614e/100\0SEQNUM=4710\0")
CAN0_ADD = b"add@/devices/virtual/net/can0\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=can0\0"
DISK_CHANGE = b"change@/devices/virtual/block/loop0\0ACTION=change\0SUBSYSTEM=block\0"


def test_the_messages_that_wake_a_wait():
    for message in (TTY_ADD, UDEV_TTY, USB_ADD, CAN0_ADD):
        assert announces_device_change(message), message[:40]
    assert not announces_device_change(DISK_CHANGE)
    assert not announces_device_change(b"add@/devices/x\0ACTION=add\0")     # no subsystem
    assert not announces_device_change(b"")


def _netlink(kind, payload=b"", flags=0):
    """A netlink message: the 16-byte header (length, type, flags, sequence, port)."""
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, 1, 0) + payload


def test_the_interface_messages_that_wake_a_wait():
    ifinfo = struct.pack("=BxHiII", 0, 280, 7, 0x1, 0x1)        # can0 (ARPHRD_CAN), IFF_UP
    assert announces_link_change(_netlink(16, ifinfo))            # RTM_NEWLINK
    assert announces_link_change(_netlink(17, ifinfo))            # RTM_DELLINK
    assert announces_link_change(_netlink(20, b"\0" * 8) + _netlink(16, ifinfo))  # the second
    assert not announces_link_change(_netlink(3, b"\0" * 4))     # NLMSG_DONE
    assert not announces_link_change(_netlink(20, b"\0" * 8))    # RTM_NEWADDR
    assert not announces_link_change(b"\x10\0\0")                # cut short
    assert not announces_link_change(struct.pack("=IHHII", 0, 20, 0, 0, 0) * 2)


async def test_a_real_kernel_interface_message_is_heard():
    sock = open_link_socket()
    if sock is None:
        pytest.skip("this system refuses a route netlink socket")
    events = DeviceEvents(sock, announces_link_change)
    try:
        # Ask the kernel for its interfaces (RTM_GETLINK, a dump): it answers on the same
        # socket with one RTM_NEWLINK per interface, as it announces a change.
        request = _netlink(18, struct.pack("=BxHiII", 0, 0, 0, 0, 0), flags=0x1 | 0x300)
        sock.sendto(request, (0, 0))
        assert await events.wait(30) is True
        assert events.received >= 1
    finally:
        events.close()


async def test_a_message_that_arrives_while_the_waiter_probes_ends_the_next_wait():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    events = DeviceEvents(ours)
    try:
        kernel.send(DISK_CHANGE)      # not a device a wait looks for
        kernel.send(TTY_ADD)
        assert await events.wait(30) is True
        assert events.received == 1
        events.wake()                 # as a simulated machine's timer does
        assert await events.wait(30) is True
    finally:
        events.close()
        kernel.close()
    events.close()                    # twice: nothing happens
    assert ours.fileno() == -1


async def test_a_real_kernel_announcement_is_heard():
    events = device_events()
    if events is None:
        pytest.skip("this system refuses a netlink uevent socket")
    try:
        try:
            # the kernel announces the loopback interface again ("change"): SUBSYSTEM=net
            with open("/sys/class/net/lo/uevent", "w", encoding="ascii") as f:
                f.write("change")
        except OSError as exc:
            pytest.skip(f"cannot make the kernel announce a device here: {exc}")
        assert await events.wait(30) is True
        assert events.received >= 1
    finally:
        events.close()


async def test_the_waits_of_an_octopus_flash_end_on_the_machines_announcements(
        rig, artifact_dir):
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                  firmware={"version": "v0.12.0-1-gold", "bridge": True},
                                  boot_delay=0.4)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    pipeline = CoreFlashPipeline(None, rig.service,
                                 machine=SimulatedMachineSeam(rig.machine.directory))
    plan = await pipeline.prepare(profile, art, {})
    # Probing again only after 10 minutes: a wait that is not woken runs out (20 s).
    config = dataclasses.replace(plan.config, poll_interval=600.0, fast_poll_interval=600.0,
                                 timeouts=dataclasses.replace(plan.config.timeouts,
                                                              bootloader_wait=20.0,
                                                              reconnect=20.0))
    plan = dataclasses.replace(plan, config=config)
    events = []
    result = await pipeline.execute(plan, events.append)
    assert result["state"] == "done", result
    steps = {s["kind"]: s for s in result["steps"]}
    assert steps["wait_katapult_usb"]["status"] == "done"
    assert steps["wait_return"]["status"] == "done"
    assert result["board_detail"] == "USB-CAN bridge 1d50:606f on USB 1-1.1, can0 up"
    image = open(art.path(), "rb").read()
    assert board.read_flash(0x08008000, len(image)) == image
    # the listeners are gone with their waits
    assert os.listdir(os.path.join(rig.machine.directory, "uevents")) == []


def _refused():
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("listener", [lambda: None, _refused], ids=["none", "refused"])
async def test_without_announcements_a_wait_still_probes(rig, artifact_dir, monkeypatch,
                                                         listener):
    # A system where netlink is refused (a container, another network namespace), or
    # whose listener cannot be opened.
    board = rig.machine.add_board("octopus", "stm32f446xx", bootloader="katapult",
                                  firmware={"version": "v0.12.0-1-gold", "bridge": True},
                                  boot_delay=0.3)
    seam = SimulatedMachineSeam(rig.machine.directory)
    monkeypatch.setattr(seam, "device_events", listener)
    profile = octopus_profile(canbus_uuid=board.canbus_uuid)
    art = write_artifact(artifact_dir("a"), profile="octopus", preset=profile.preset.id)
    pipeline = CoreFlashPipeline(None, rig.service, machine=seam)
    plan = await pipeline.prepare(profile, art, {})
    events = []
    result = await pipeline.execute(plan, events.append)
    assert result["state"] == "done", result
    assert board.mode == "klipper-canbridge"
    said = [e.message for e in events if e.message.startswith("Cannot listen")]
    if listener is _refused:
        assert said == ["Cannot listen for the kernel's device events ([Errno 13] Permission "
                        "denied); looking for the board at the usual interval"]
    else:
        assert said == []

