// stm32/watchdog.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "sched.h"

void
watchdog_reset(void)
{
    // watchdog reset
    irq_disable();
    irq_enable();
}

void
watchdog_init(void)
{
    // watchdog init
    irq_disable();
    irq_enable();
}

