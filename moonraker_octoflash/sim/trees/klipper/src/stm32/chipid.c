// stm32/chipid.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/canbus.h"

void
chipid_init(void)
{
    // chipid init
    irq_disable();
    irq_enable();
}

