#!/usr/bin/env python3
"""Collect the compile-time requests of the simulated firmware.

Reads the DECL_* lines that simcc.py stored in each object and writes
``compile_time_request.o``.  For Klipper it holds the data dictionary,
zlib-compressed JSON with the app name, the version (``git describe``, with
a build time and host name appended for a dirty tree, as Klipper does) and
the constants such as MCU and CLOCK_FREQ; ``-d`` also writes the plain
JSON (Klipper's ``klipper.dict``).

It runs once per build, started by make with ``python -S``: it imports what a
build needs and no more (the tests build several hundred times a run).
"""
import json
import os
import subprocess
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True   # leave no __pycache__ in the checkout
import simcc  # noqa: E402


def git_version():
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--tags", "--long", "--dirty"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "?"
    version = out.stdout.decode().strip() or "?"
    if version.endswith("-dirty"):
        import socket
        import time
        stamp = time.strftime("%Y%m%d_%H%M%S")
        version = f"{version}-{stamp}-{socket.gethostname()}"
    return version


class Args:
    """The command line: --app NAME --autoconf FILE [-d DICT] -o OUT OBJECT..."""
    OPTIONS = {"--app": "app", "--autoconf": "autoconf", "-d": "dict_out", "-o": "out"}

    def __init__(self, argv):
        self.app = self.autoconf = self.dict_out = self.out = None
        self.objects = []
        words = iter(argv)
        for word in words:
            if word in self.OPTIONS:
                value = next(words, None)
                if value is None:
                    sys.exit(f"buildcommands.py: {word} needs a value")
                setattr(self, self.OPTIONS[word], value)
            elif word.startswith("-"):
                sys.exit(f"buildcommands.py: unknown option {word}")
            else:
                self.objects.append(word)
        for option in ("--app", "--autoconf", "-o"):
            if getattr(self, self.OPTIONS[option]) is None:
                sys.exit(f"buildcommands.py: {option} is required")


def main():
    args = Args(sys.argv[1:])

    config = simcc.read_autoconf(args.autoconf)
    constants, commands, responses, enumerations = {}, [], [], {}
    for obj in args.objects:
        header, _code = simcc.read_object(obj)
        for kind, decl_args in header["decls"]:
            if kind in ("DECL_CONSTANT", "DECL_CONSTANT_STR"):
                item = simcc.resolve_decl(kind, decl_args, config)
                if item:
                    constants[item[0]] = item[1]
            elif kind == "DECL_COMMAND":
                commands.append(decl_args.split(",", 1)[1].strip().strip('"'))
            elif kind == "DECL_ENUMERATION":
                group, name, value = [p.strip().strip('"') for p in decl_args.split(",")]
                enumerations.setdefault(group, {})[name] = int(value, 0)
    responses = ["identify_response offset=%u data=%.*s", "is_shutdown static_string_id=%hu"]
    msg_ids = {}
    for index, fmt in enumerate(sorted(set(commands)) + responses):
        msg_ids[fmt] = index + 2
    data = {
        "app": args.app,
        "version": git_version(),
        "build_versions": "simcc: moonraker-octoflash stand-in toolchain",
        "license": "GNU GPLv3",
        "config": constants,
        "commands": {f: i for f, i in msg_ids.items() if f not in responses},
        "responses": {f: i for f, i in msg_ids.items() if f in responses},
        "enumerations": enumerations,
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if args.dict_out:
        with open(args.dict_out, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, indent=2)
    if args.app == "Klipper":
        payload = zlib.compress(text.encode(), 9)
    else:
        payload = text.encode()
    payload += b"\0" * (-len(payload) % 4)
    simcc.write_object(args.out, {"source": "compile_time_request", "decls": []}, payload)


if __name__ == "__main__":
    main()
