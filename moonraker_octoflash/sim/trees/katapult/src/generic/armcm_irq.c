// generic/armcm_irq.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for generic/crc16_ccitt.c (one compile instead of 2).

#include "generic/irq.h"
#include "compiler.h"

void
irq_disable_all(void)
{
    // irq disable all
    irq_disable();
    irq_enable();
}

void
crc16_ccitt(void)
{
    // crc16 ccitt
    irq_disable();
    irq_enable();
}
