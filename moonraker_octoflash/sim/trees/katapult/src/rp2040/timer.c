// rp2040/timer.c: part of the simulated katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
rp2040_timer_setup(void)
{
    // rp2040 timer setup
    irq_disable();
    irq_enable();
}
