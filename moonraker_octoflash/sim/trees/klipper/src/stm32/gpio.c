// stm32/gpio.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for stm32/watchdog.c (one compile instead of 2).

#include "stm32/gpio.h"
#include "command.h"
#include "stm32/internal.h"
#include "sched.h"

void
gpio_out_setup(void)
{
    // gpio out setup
    irq_disable();
    irq_enable();
}

void
gpio_in_setup(void)
{
    // gpio in setup
    irq_disable();
    irq_enable();
}

DECL_ENUMERATION("pin", "PA0", 0);
DECL_ENUMERATION("pin", "PD0", 48);

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
