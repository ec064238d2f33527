// stm32/chipid.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"

void
chipid_init(void)
{
    // chipid init
    irq_disable();
    irq_enable();
}

