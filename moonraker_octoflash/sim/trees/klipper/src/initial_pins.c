// initial_pins.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "stm32/gpio.h"

void
initial_pins_setup(void)
{
    // initial pins setup
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("INITIAL_PINS", CONFIG_INITIAL_PINS);
