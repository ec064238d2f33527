// stm32/spi.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"

void
spi_setup(void)
{
    // spi setup
    irq_disable();
    irq_enable();
}

void
spi_transfer(void)
{
    // spi transfer
    irq_disable();
    irq_enable();
}

