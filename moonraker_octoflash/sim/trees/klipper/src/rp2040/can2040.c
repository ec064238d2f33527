// rp2040/can2040.c: part of the simulated klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
rp2040_can2040_setup(void)
{
    // rp2040 can2040 setup
    irq_disable();
    irq_enable();
}
