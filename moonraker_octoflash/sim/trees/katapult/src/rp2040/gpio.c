// rp2040/gpio.c: part of the simulated katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
rp2040_gpio_setup(void)
{
    // rp2040 gpio setup
    irq_disable();
    irq_enable();
}
