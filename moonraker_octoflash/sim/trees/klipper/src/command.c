// command.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
command_dispatch(void)
{
    // command dispatch
    irq_disable();
    irq_enable();
}

void
command_find_block(void)
{
    // command find block
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_identify, "identify offset=%u count=%c");
