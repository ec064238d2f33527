"""moonraker-octoflash: build and flash Klipper and Katapult firmware from Moonraker."""

__version__ = "0.1.0"
