"""The one seam between octoflash and the computer it runs on.

Everything a build or a flash touches outside octoflash's own files — USB
devices, serial ports, CAN interfaces, the flash tools, Klipper's service,
the cross compiler — is reached through a ``Machine``, chosen once at the
edge (the Moonraker component, the command line) and handed inward.  The
real computer is the default (``RealMachine``).  Another machine (the
demo's and the tests' simulated one) is named by the ``[octoflash]
machine`` option as ``package.module:factory ARGUMENT`` and built by that
factory; no module of the product knows which machine it was given.
"""
from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Protocol

from .errors import ValidationError

if TYPE_CHECKING:
    from .discovery.uevents import DeviceEvents
    from .service import KlipperService
    from .settings import Settings

# "package.module:factory" and an optional argument after a space.
_SPEC_RE = (r"(?P<module>[A-Za-z_][A-Za-z0-9_.]*):(?P<factory>[A-Za-z_][A-Za-z0-9_]*)"
            r"(?:\s+(?P<argument>\S.*))?")     # compiled at first use

# The cross compiler a build needs, by the start of the MCU's name.
_COMPILERS = (("atmega", "avr-gcc"), ("at90", "avr-gcc"), ("stm32", "arm-none-eabi-gcc"),
              ("rp2", "arm-none-eabi-gcc"), ("lpc", "arm-none-eabi-gcc"),
              ("sam", "arm-none-eabi-gcc"), ("gd32", "arm-none-eabi-gcc"))


class Machine(Protocol):
    """What octoflash may ask of the computer it runs on."""

    name: str
    by_id_dir: Optional[str]          # None: the settings' serial_by_id_path

    def scan_options(self, listen_time: Optional[float] = None) -> Dict[str, Any]:
        """Keyword arguments for ``discovery.scan``: where devices are looked for."""
        ...

    def tool_paths(self) -> Dict[str, str]:
        """Flash tools that replace the settings' (``dfu_util``, ``flashtool``); {} for none."""
        ...

    def cross_compiler(self, mcu: str) -> Optional[str]:
        """The compiler a build for ``mcu`` needs installed, or None when it needs none."""
        ...

    def klipper_control(self) -> Optional[KlipperService]:
        """How Klipper is stopped and started here; None: the adapter's usual way."""
        ...

    def device_events(self) -> Optional[DeviceEvents]:
        """Start listening for devices that come and go (called on the event loop that
        waits; ``close()`` the result); None where they cannot be heard."""
        ...

    async def open(self) -> None:
        """Start what must run inside this process while octoflash works."""
        ...

    async def close(self) -> None:
        ...


class RealMachine:
    """This computer: the settings' folders and CAN interfaces, the installed tools."""

    name = "this computer"

    def __init__(self, settings: Optional[Settings] = None) -> None:
        self.settings = settings
        self.by_id_dir: Optional[str] = None

    def scan_options(self, listen_time: Optional[float] = None) -> Dict[str, Any]:
        s = self.settings
        if s is None:
            return {} if listen_time is None else {"can_listen_time": listen_time}
        return {"by_id_dir": s.serial_by_id_path,
                "can_interfaces": list(s.can_interfaces) or None,
                "can_listen_time": s.can_listen_time if listen_time is None else listen_time}

    def tool_paths(self) -> Dict[str, str]:
        return {}

    def cross_compiler(self, mcu: str) -> Optional[str]:
        name = mcu.lower()
        for prefix, compiler in _COMPILERS:
            if name.startswith(prefix):
                return compiler
        return "arm-none-eabi-gcc"

    def klipper_control(self) -> Optional[KlipperService]:
        return None

    def device_events(self) -> Optional[DeviceEvents]:
        from .discovery.uevents import device_events
        return device_events()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def check_machine_spec(spec: str) -> None:
    """Refuse a ``machine`` option that is not ``package.module:factory [ARGUMENT]``."""
    if spec and not re.fullmatch(_SPEC_RE, spec.strip()):
        raise ValidationError(
            f"[octoflash] machine: {spec!r} is not of the form package.module:factory "
            "[ARGUMENT]; leave it unset to use this computer")


def load_machine(settings: Settings) -> Machine:
    """The machine the settings name (``[octoflash] machine``), or this computer."""
    spec = (settings.machine or "").strip()
    if not spec:
        return RealMachine(settings)
    m = re.fullmatch(_SPEC_RE, spec)
    if m is None:
        check_machine_spec(spec)
        raise AssertionError("unreachable")
    try:
        module = importlib.import_module(m.group("module"))
        factory: Callable[..., Machine] = getattr(module, m.group("factory"))
    except (ImportError, AttributeError) as exc:
        raise ValidationError(f"[octoflash] machine: {spec!r} cannot be loaded ({exc})") from None
    return factory(m.group("argument") or "", settings)
