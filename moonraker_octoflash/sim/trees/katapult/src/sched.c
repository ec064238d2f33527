// sched.c: part of the simulated Katapult tree (moonraker-octoflash tests)
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
sched_run_init(void)
{
    // sched run init
    irq_disable();
    irq_enable();
}

