"""Simulated boards and tool doubles, used by the tests and the demo.

``SimulatedMachine`` (board.py) keeps boards in a folder; ``tool_paths()``
gives the dfu-util and flashtool.py doubles bound to it, ``usb_backend()``
a pyusb backend and ``can_nodes()`` the CAN nodes on python-can's virtual
bus.  ``sim/trees`` (source-tree doubles) and ``sim/klippy.py`` (a Klipper
stand-in) belong to the build and Moonraker parts.
"""
