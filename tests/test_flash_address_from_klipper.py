"""A profile that names only its Klipper MCU is reached the way printer.cfg says."""
from moonraker_octoflash.discovery import DeviceSnapshot
from moonraker_octoflash.discovery.klipper import klipper_mcus
from moonraker_octoflash.flash.pipeline import with_address_from_klipper
from moonraker_octoflash.profiles import profile_from_json

KLIPPER = {
    "mcu Toolhead": {"mcu_version": "v0.13.0-1-gabc", "mcu_constants": {"MCU": "stm32f446xx"}},
    "mcu": {"mcu_version": "v0.13.0-1-gabc", "mcu_constants": {"MCU": "stm32f446xx"}},
    "configfile": {
        "settings": {
            "mcu toolhead": {"canbus_uuid": "aabbccddeeff", "canbus_interface": "can1"},
            "mcu": {"serial": "/dev/serial/by-id/usb-Klipper_stm32f446xx_1-if00", "baud": 250000},
        },
        "config": {"mcu Toolhead": {"canbus_uuid": "aabbccddeeff", "canbus_interface": "can1"},
                   "mcu": {"serial": "/dev/serial/by-id/usb-Klipper_stm32f446xx_1-if00"}},
    },
}


def snapshot():
    return DeviceSnapshot(klipper_mcus=klipper_mcus(KLIPPER), klipper_state="ready")


def test_can_address_is_taken_from_klipper():
    p = profile_from_json({"name": "th", "preset": "btt-octopus-f446-canbridge",
                           "klipper_mcu": "toolhead"})
    assert p.canbus_uuid is None
    filled = with_address_from_klipper(p, snapshot())
    assert (filled.canbus_uuid, filled.canbus_interface) == ("aabbccddeeff", "can1")
    assert p.canbus_uuid is None                       # the stored profile is unchanged


def test_serial_address_is_taken_from_klipper():
    p = profile_from_json({"name": "main", "preset": "btt-octopus-f446-canbridge",
                           "klipper_mcu": "mcu"})
    assert with_address_from_klipper(p, snapshot()).serial == \
        "/dev/serial/by-id/usb-Klipper_stm32f446xx_1-if00"


def test_an_explicit_address_wins_and_unknown_mcus_change_nothing():
    p = profile_from_json({"name": "th", "preset": "btt-octopus-f446-canbridge",
                           "klipper_mcu": "toolhead", "canbus_uuid": "112233445566"})
    assert with_address_from_klipper(p, snapshot()).canbus_uuid == "112233445566"
    q = profile_from_json({"name": "x", "preset": "btt-octopus-f446-canbridge",
                           "klipper_mcu": "nosuch"})
    assert with_address_from_klipper(q, snapshot()) is q
