// generic/armcm_timer.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "sched.h"
#include "generic/irq.h"

void
timer_read_time(void)
{
    // timer read time
    irq_disable();
    irq_enable();
}

void
udelay(void)
{
    // udelay
    irq_disable();
    irq_enable();
}

