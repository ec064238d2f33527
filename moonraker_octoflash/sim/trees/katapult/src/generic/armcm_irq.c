// generic/armcm_irq.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/irq.h"

void
irq_disable_all(void)
{
    // irq disable all
    irq_disable();
    irq_enable();
}

