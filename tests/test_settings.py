import pytest

from moonraker_octoflash.errors import ValidationError
from moonraker_octoflash.settings import Settings, data_path_for_config


def test_defaults_and_expansion(tmp_path):
    s = Settings.from_options({"katapult_path": str(tmp_path / "kat")}, str(tmp_path / "pd"))
    assert s.build_path == str(tmp_path / "pd" / "octoflash")
    assert s.flashtool_path == str(tmp_path / "kat" / "scripts" / "flashtool.py")
    assert s.build_jobs >= 1 and s.builds_kept == 3 and s.announcements is True


def test_typed_values():
    s = Settings.from_options({"builds_kept": "7", "announcements": "False",
                               "can_interfaces": "can0\ncan1", "make_timeout": "600"}, "/pd")
    assert (s.builds_kept, s.announcements, s.can_interfaces, s.make_timeout) == \
        (7, False, ["can0", "can1"], 600.0)


@pytest.mark.parametrize("options, fragment", [
    ({"builds_kept": "0"}, "builds_kept"),
    ({"builds_kept": "many"}, "builds_kept"),
    ({"announcements": "perhaps"}, "announcements"),
    ({"klipper_pth": "/x"}, "klipper_pth"),
    ({"make_timeout": "1"}, "make_timeout"),
])
def test_bad_options_name_themselves(options, fragment):
    with pytest.raises(ValidationError) as exc:
        Settings.from_options(options, "/pd")
    assert fragment in str(exc.value)


def test_data_path_for_config():
    assert data_path_for_config("/home/pi/printer_data/config/moonraker.conf") == "/home/pi/printer_data"
