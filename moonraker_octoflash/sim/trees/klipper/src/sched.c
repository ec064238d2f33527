// sched.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "sched.h"
#include "command.h"
#include "generic/irq.h"

void
sched_main(void)
{
    // sched main
    irq_disable();
    irq_enable();
}

void
sched_check_periodic(void)
{
    // sched check periodic
    irq_disable();
    irq_enable();
}

void
sched_timer_dispatch(void)
{
    // sched timer dispatch
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_get_uptime, "get_uptime");
DECL_COMMAND(command_get_clock, "get_clock");
