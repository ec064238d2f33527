// sensor_bulk.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
sensor_bulk_reset(void)
{
    // sensor bulk reset
    irq_disable();
    irq_enable();
}

void
sensor_bulk_report(void)
{
    // sensor bulk report
    irq_disable();
    irq_enable();
}

