// generic/canbus.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/canbus.h"
#include "command.h"

void
canbus_notify_rx(void)
{
    // canbus notify rx
    irq_disable();
    irq_enable();
}

void
canbus_tx_task(void)
{
    // canbus tx task
    irq_disable();
    irq_enable();
}

