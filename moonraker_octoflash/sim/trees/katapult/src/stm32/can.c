// stm32/can.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/canbus.h"

void
can_init(void)
{
    // can init
    irq_disable();
    irq_enable();
}

