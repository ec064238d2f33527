// debugcmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
debug_read(void)
{
    // debug read
    irq_disable();
    irq_enable();
}

void
debug_write(void)
{
    // debug write
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_debug_read, "debug_read order=%c addr=%u");
