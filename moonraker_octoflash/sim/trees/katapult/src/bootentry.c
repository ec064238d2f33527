// bootentry.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for initial_pins.c (one compile instead of 2).

#include "bootentry.h"
#include "sched.h"
#include "stm32/internal.h"
#include "command.h"
#include "stm32/gpio.h"

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

void
initial_pins_setup(void)
{
    // initial pins setup
    irq_disable();
    irq_enable();
}
