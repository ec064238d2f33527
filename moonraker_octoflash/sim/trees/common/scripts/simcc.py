#!/usr/bin/env python3
"""Stand-in toolchain for the simulated Klipper and Katapult trees.

It plays the three parts of arm-none-eabi that a Klipper build uses, with
file formats of its own:

  simcc.py compile [-Os] -I DIR... -c SRC -o OBJ   "compile" one C file
  simcc.py link --autoconf H [--origin CONFIG_X] -o ELF OBJ...
                                              "link" objects into an image
  simcc.py objcopy ELF BIN                    flat binary, as flashed
  simcc.py wrap BIN OBJ                       a binary as an object (payloads)
  simcc.py uf2 ELF UF2                        an RP2040 UF2 file (boot-ROM format)

Compiling does a fixed amount of CPU work per file, so that a full build
costs noticeably more than an incremental one, and writes a gcc-style
dependency file (``OBJ`` with ``.d``) so make rebuilds an object when a
header it includes changes.  ``#error`` in a source fails the compile with
gcc's message format.  ``DECL_COMMAND``/``DECL_CONSTANT`` lines are
collected into the object, the way Klipper's compile-time requests are.
"""
import os
import struct
import sys

try:   # the C module behind hashlib.sha256: the same digests, a faster start
    from _sha256 import sha256
except ImportError:    # Python 3.12 and later
    try:
        from _sha2 import sha256
    except ImportError:
        from hashlib import sha256

# A compile runs once per C file: it imports neither re nor json (their
# import is most of a compile's time); the rarer commands import them.

OBJ_MAGIC = b"SIMOBJ1\0"
ELF_MAGIC = b"SIMELF1\0"
# Hashing rounds per compiled file: the "CPU cost" of a compile.  The test
# suite lowers it (OCTOFLASH_SIMCC_ROUNDS) where a test is not about how long
# a build takes; the images do not depend on it.
WORK_ROUNDS = int(os.environ.get("OCTOFLASH_SIMCC_ROUNDS", "40000"))
VECTOR_TABLE_SIZE = 0x1c0

DECL_KINDS = ("DECL_COMMAND", "DECL_CONSTANT_STR", "DECL_CONSTANT", "DECL_ENUMERATION")
WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def directive(line, word):
    """What follows ``#include`` / ``#error`` (``word``) on a line, or None."""
    text = line.lstrip()
    if not text.startswith("#"):
        return None
    text = text[1:].lstrip()
    if not text.startswith(word):
        return None
    rest = text[len(word):]
    if rest and rest[0] in WORD_CHARS:
        return None
    return rest


def include_name(line):
    """The file of an ``#include "name"`` line, or None (``<name>`` is not followed)."""
    rest = directive(line, "include")
    if not rest or not rest[0].isspace():
        return None
    rest = rest.lstrip()
    end = rest.find('"', 1)
    if not rest.startswith('"') or end < 2:
        return None
    return rest[1:end]


def decl(line):
    """(kind, arguments) of a ``DECL_...(arguments);`` line, or None."""
    text = line.lstrip()
    for kind in DECL_KINDS:
        if not text.startswith(kind):
            continue
        rest = text[len(kind):].lstrip()
        if not rest.startswith("("):
            continue
        end = len(rest)
        while True:
            end = rest.rfind(")", 0, end)
            if end <= 0:
                break
            if rest[end + 1:].lstrip().startswith(";"):
                return kind, rest[1:end]
    return None


def json_text(value):
    """``json.dumps(value, sort_keys=True)`` for the str / list / dict of an object header."""
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif 0x20 <= code < 0x7f:
                out.append(ch)
            elif ch in "\n\r\t\b\f":
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t",
                            "\b": "\\b", "\f": "\\f"}[ch])
            elif code > 0xffff:
                code -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xd800 | (code >> 10), 0xdc00 | (code & 0x3ff)))
            else:
                out.append("\\u%04x" % code)
        out.append('"')
        return "".join(out)
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(json_text(k) + ": " + json_text(value[k])
                               for k in sorted(value)) + "}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def read_autoconf(path):
    import re
    define = re.compile(r'^#define\s+(CONFIG_\w+)\s+(.*)$')
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = define.match(line.strip())
            if m:
                values[m.group(1)] = m.group(2).strip()
    return values


def find_header(name, src_dir, include_dirs):
    for base in [src_dir] + include_dirs:
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return os.path.normpath(path)
    return None


def scan_source(path, include_dirs, seen, decls):
    """Follow #include "..." lines; return the headers used, fail on #error."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        message = directive(line, "error")
        if message is not None:
            fail(f"{path}:{lineno}:2: error: #error {message.lstrip()}")
        name = include_name(line)
        if name is not None:
            header = find_header(name, os.path.dirname(path), include_dirs)
            if header is None:
                fail(f"{path}:{lineno}:10: fatal error: {name}: "
                     "No such file or directory\ncompilation terminated.")
            if header not in seen:
                seen.append(header)
                scan_source(header, include_dirs, seen, decls)
            continue
        found = decl(line)
        if found and decls is not None and path.endswith(".c"):
            decls.append([found[0], found[1].strip()])
    return seen


def resolve_decl(kind, args, config):
    """Turn DECL_CONSTANT("NAME", CONFIG_X) into ("NAME", value)."""
    parts = [p.strip() for p in args.split(",", 1)]
    if len(parts) != 2:
        return None
    name = parts[0].strip('"')
    raw = config.get(parts[1], parts[1]) if parts[1].startswith("CONFIG_") else parts[1]
    if raw.startswith('"'):
        return name, raw.strip('"')
    try:
        return name, int(raw, 0)
    except ValueError:
        return name, raw


def code_bytes(seed, size):
    """Deterministic "machine code": the same source gives the same bytes."""
    work = seed
    for _ in range(WORK_ROUNDS):         # the cost only: the bytes come from the seed
        work = sha256(work).digest()
    digest = sha256(seed).digest()
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += sha256(digest + counter.to_bytes(4, "little")).digest()
        counter += 1
    return bytes(out[:size])


def write_object(path, header, code):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    blob = json_text(header).encode()
    with open(path, "wb") as f:
        f.write(OBJ_MAGIC + struct.pack("<I", len(blob)) + blob + code)


def read_object(path):
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(OBJ_MAGIC):
        fail(f"{path}: file format not recognized")
    size = struct.unpack_from("<I", data, len(OBJ_MAGIC))[0]
    start = len(OBJ_MAGIC) + 4
    import json
    return json.loads(data[start:start + size]), data[start + size:]


def cmd_compile(argv):
    include_dirs, src, obj, small = [], None, None, False
    it = iter(argv)
    for arg in it:
        if arg == "-Os":
            small = True      # Katapult is built for size
        elif arg == "-I":
            include_dirs.append(next(it))
        elif arg == "-c":
            src = next(it)
        elif arg == "-o":
            obj = next(it)
        else:
            fail(f"simcc: unrecognized option '{arg}'")
    if not src or not obj:
        fail("simcc: compile needs -c SRC -o OBJ")
    decls = []
    headers = scan_source(src, include_dirs, [], decls)
    with open(src, "rb") as f:
        text = f.read()
    # The configuration reaches the code through autoconf.h, as in gcc.
    seed = sha256(text)
    for header in headers:
        with open(header, "rb") as f:
            seed.update(f.read())
    size = len(text) // 4 if small else 2 * len(text)
    code = code_bytes(seed.digest(), max(128 if small else 256, size))
    write_object(obj, {"source": src, "decls": decls}, code)
    deps = obj[:-2] + ".d"
    with open(deps, "w", encoding="utf-8") as f:
        f.write(f"{obj}: {src} {' '.join(headers)}\n")
        for header in headers:
            f.write(f"{header}:\n")


def cmd_link(argv):
    autoconf, out, objs = None, None, []
    origin = "CONFIG_FLASH_APPLICATION_ADDRESS"
    it = iter(argv)
    for arg in it:
        if arg == "--autoconf":
            autoconf = next(it)
        elif arg == "--origin":
            origin = next(it)
        elif arg == "-o":
            out = next(it)
        else:
            objs.append(arg)
    config = read_autoconf(autoconf)
    app = int(config.get(origin, "0x8000000"), 0)
    ram_top = (int(config.get("CONFIG_RAM_START", "0x20000000"), 0)
               + int(config.get("CONFIG_RAM_SIZE", "0x5000"), 0))
    body = bytearray()
    for obj in objs:
        _header, code = read_object(obj)
        body += code
        body += b"\0" * (-len(body) % 4)
    flash_size = int(config.get("CONFIG_FLASH_SIZE", "0"), 0)
    available = flash_size - (app - int(config.get("CONFIG_FLASH_BOOT_ADDRESS", "0x8000000"), 0))
    if flash_size and VECTOR_TABLE_SIZE + len(body) > available:
        fail(f"ld: {out} section `.text' will not fit in region `rom'\n"
             f"ld: region `rom' overflowed by {VECTOR_TABLE_SIZE + len(body) - available} bytes\n"
             "collect2: error: ld returned 1 exit status")
    import json
    header = json.dumps({"app_address": app, "ram_top": ram_top}).encode()
    with open(out, "wb") as f:
        f.write(ELF_MAGIC + struct.pack("<I", len(header)) + header + bytes(body))


def flat_image(src):
    """(address, bytes) of a linked image as it lies in flash."""
    with open(src, "rb") as f:
        data = f.read()
    if not data.startswith(ELF_MAGIC):
        fail(f"objcopy: {src}: file format not recognized")
    size = struct.unpack_from("<I", data, len(ELF_MAGIC))[0]
    start = len(ELF_MAGIC) + 4
    import json
    header = json.loads(data[start:start + size])
    body = data[start + size:]
    # A Cortex-M vector table: initial stack pointer, then handlers (thumb
    # addresses) inside the image, so a reader can tell where it is linked.
    reset = header["app_address"] + VECTOR_TABLE_SIZE + 1
    table = struct.pack("<I", header["ram_top"])
    table += struct.pack("<I", reset) * (VECTOR_TABLE_SIZE // 4 - 1)
    return header["app_address"], table + body


def cmd_objcopy(argv):
    if len(argv) != 2:
        fail("simcc: objcopy needs ELF BIN")
    _address, image = flat_image(argv[0])
    with open(argv[1], "wb") as f:
        f.write(image)


UF2_MAGICS = (0x0A324655, 0x9E5D5157, 0x0AB16F30)
UF2_FAMILY_RP2040 = 0xE48BFF56
UF2_FLAG_FAMILY = 0x00002000


def cmd_uf2(argv):
    """256-byte payload blocks, as elf2uf2 writes them for the RP2040 boot ROM.

    An image linked just after the boot stage 2 (0x...100) gets a stand-in
    stage 2 in front, so the file starts at the beginning of flash.
    """
    if len(argv) != 2:
        fail("simcc: uf2 needs ELF UF2")
    address, image = flat_image(argv[0])
    if address & 0xfff == 0x100:
        address -= 0x100
        image = b"\xa5" * 0x100 + image
    image += b"\0" * (-len(image) % 256)
    count = len(image) // 256
    with open(argv[1], "wb") as f:
        for number in range(count):
            block = struct.pack("<IIIIIIII", UF2_MAGICS[0], UF2_MAGICS[1], UF2_FLAG_FAMILY,
                                address + 256 * number, 256, number, count, UF2_FAMILY_RP2040)
            block += image[256 * number:256 * (number + 1)]
            block += b"\0" * (512 - 4 - len(block)) + struct.pack("<I", UF2_MAGICS[2])
            f.write(block)


def cmd_wrap(argv):
    if len(argv) != 2:
        fail("simcc: wrap needs BIN OBJ")
    with open(argv[0], "rb") as f:
        payload = f.read()
    payload += b"\0" * (-len(payload) % 4)
    write_object(argv[1], {"source": argv[0], "decls": []}, payload)


def main():
    if len(sys.argv) < 2:
        fail(__doc__)
    command, argv = sys.argv[1], sys.argv[2:]
    handlers = {"compile": cmd_compile, "link": cmd_link, "objcopy": cmd_objcopy,
                "wrap": cmd_wrap, "uf2": cmd_uf2}
    if command not in handlers:
        fail(f"simcc: unknown command '{command}'")
    handlers[command](argv)


if __name__ == "__main__":
    main()
