// bootentry.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "bootentry.h"
#include "sched.h"
#include "stm32/internal.h"

void
bootentry_check(void)
{
    // bootentry check
    irq_disable();
    irq_enable();
}

void
check_double_reset(void)
{
    // check double reset
    irq_disable();
    irq_enable();
}

void
check_button_pressed(void)
{
    // check button pressed
    irq_disable();
    irq_enable();
}

