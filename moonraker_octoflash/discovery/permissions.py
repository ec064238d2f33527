"""USB and serial permissions: the udev rule octoflash installs, and what to say when
access is refused.

Moonraker runs as the printer's user, not root.  Reading a USB device's
identity from sysfs needs no permission, but dfu-util, pyusb and the
RP2040 writer open the device through libusb, which needs write access to
``/dev/bus/usb/BUS/DEV``; Debian's own dfu-util rule grants that only to a
user logged in at the seat (``uaccess``), never to a service.  ``install.sh``
therefore installs ``UDEV_RULE_FILE`` (text: ``udev_rule(user)``) giving the
service's user the devices octoflash talks to.  Serial ports
(``/dev/ttyACM*``) belong to the ``dialout`` group.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

UDEV_RULE_NAME = "70-octoflash.rules"
UDEV_RULES_DIR = "/etc/udev/rules.d"
UDEV_RULE_FILE = f"{UDEV_RULES_DIR}/{UDEV_RULE_NAME}"

# (vendor, product, what it is): every USB device octoflash opens or has a tool open.
USB_DEVICES: Tuple[Tuple[str, str, str], ...] = (
    ("0483", "df11", "STM32 ROM bootloader in DFU mode"),
    ("1d50", "6177", "Katapult"),
    ("1d50", "614e", "Klipper (USB serial)"),
    ("1d50", "606f", "Klipper USB-CAN bridge"),
    ("2e8a", "0003", "RP2040 boot ROM (BOOTSEL)"),
    ("2e8a", "000f", "RP2350 boot ROM (BOOTSEL)"),
)

_USER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def valid_user(user: str) -> bool:
    """A user name that can be written into a udev rule as it is."""
    return bool(user) and len(user) <= 32 and set(user) <= _USER_CHARS and user[0] != "-"


def udev_rule(user: str) -> str:
    """The rule file: the service's user owns these USB devices (mode 0660)."""
    if not valid_user(user):
        raise ValueError(f"not a user name for a udev rule: {user!r}")
    lines: List[str] = [
        "# Installed by moonraker-octoflash's install.sh (removed by install.sh --uninstall).",
        f"# Gives the Moonraker service's user ({user}) the USB devices octoflash flashes",
        "# through, so dfu-util, pyusb and the RP2040 writer can open them without sudo.",
    ]
    for vendor, product, what in USB_DEVICES:
        lines.append(f"# {what}")
        lines.append(f'SUBSYSTEM=="usb", ATTR{{idVendor}}=="{vendor}", '
                     f'ATTR{{idProduct}}=="{product}", OWNER="{user}", MODE="0660"')
    return "\n".join(lines) + "\n"


def permission_fix(device: Optional[str] = None, *, serial: bool = False) -> str:
    """What the user can do when opening ``device`` was refused."""
    where = f" {device}" if device else ""
    if serial:
        return (f"The Moonraker service's user may not open the serial port{where}: add it to "
                "the dialout group (sudo usermod -aG dialout $USER, then restart Moonraker), "
                f"or run ./install.sh again, whose udev rule ({UDEV_RULE_FILE}) covers "
                "Klipper's and Katapult's USB devices.")
    return (f"The Moonraker service's user may not open the USB device{where}: run ./install.sh "
            f"again to install the udev rule {UDEV_RULE_FILE} (it gives that user the DFU, "
            "Katapult, Klipper, USB-CAN bridge and RP2040 boot devices), then unplug and plug "
            "in the board or run: sudo udevadm trigger --subsystem-match=usb")


def is_access_error(exc: BaseException) -> bool:
    """A pyusb/libusb or OS error that means "no permission" (not "gone", not "busy")."""
    if isinstance(exc, PermissionError):
        return True
    errno = getattr(exc, "errno", None)
    backend = getattr(exc, "backend_error_code", None)
    return errno == 13 or backend == -3 or "LIBUSB_ERROR_ACCESS" in str(exc) \
        or "Access denied" in str(exc)
