#!/bin/sh
# The simulated Klipper tree has no host software to install. Moonraker's
# update manager expects this script in a Klipper checkout, so it is here.
echo "simulated Klipper tree: nothing to install"
