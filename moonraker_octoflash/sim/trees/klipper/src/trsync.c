// trsync.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
trsync_do_trigger(void)
{
    // trsync do trigger
    irq_disable();
    irq_enable();
}

void
trsync_expire_event(void)
{
    // trsync expire event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_trsync, "config_trsync oid=%c");
