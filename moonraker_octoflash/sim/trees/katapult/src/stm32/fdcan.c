// stm32/fdcan.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/canbus.h"

void
fdcan_init(void)
{
    // fdcan init
    irq_disable();
    irq_enable();
}

