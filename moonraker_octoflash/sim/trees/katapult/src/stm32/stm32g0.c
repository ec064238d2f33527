// stm32/stm32g0.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"

void
clock_setup(void)
{
    // clock setup
    irq_disable();
    irq_enable();
}

