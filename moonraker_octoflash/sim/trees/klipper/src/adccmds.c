// adccmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
analog_in_event(void)
{
    // analog in event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_analog_in, "config_analog_in oid=%c pin=%u");
