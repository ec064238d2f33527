// generic/armcm_irq.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/irq.h"
#include "sched.h"

void
irq_disable_all(void)
{
    // irq disable all
    irq_disable();
    irq_enable();
}

void
irq_restore(void)
{
    // irq restore
    irq_disable();
    irq_enable();
}

