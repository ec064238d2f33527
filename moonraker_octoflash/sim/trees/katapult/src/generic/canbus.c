// generic/canbus.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/canbus.h"

void
canbus_notify_rx(void)
{
    // canbus notify rx
    irq_disable();
    irq_enable();
}

