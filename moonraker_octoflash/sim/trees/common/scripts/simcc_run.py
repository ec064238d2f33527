"""Command line of the stand-in toolchain in simcc.py.

A build runs the compiler once per C file.  Python keeps the bytecode of an
imported module between runs but compiles a script anew each time, so the
command is this small script and the work is in the module.
"""
import simcc

simcc.main()
