// generic/armcm_timer.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "sched.h"
#include "command.h"
#include "generic/irq.h"

void
timer_read_time(void)
{
    // timer read time
    irq_disable();
    irq_enable();
}

void
timer_kick(void)
{
    // timer kick
    irq_disable();
    irq_enable();
}

void
timer_init(void)
{
    // timer init
    irq_disable();
    irq_enable();
}

DECL_CONSTANT("CLOCK_FREQ", CONFIG_CLOCK_FREQ);
