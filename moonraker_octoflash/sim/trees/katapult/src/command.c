// command.c: part of the simulated Katapult tree (moonraker-octoflash tests)
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
command_respond_ack(void)
{
    // command respond ack
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_connect, "connect");
DECL_COMMAND(command_complete, "complete");
