// generic/crc16_ccitt.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "compiler.h"

void
crc16_ccitt(void)
{
    // crc16 ccitt
    irq_disable();
    irq_enable();
}

