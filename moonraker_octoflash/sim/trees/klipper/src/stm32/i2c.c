// stm32/i2c.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"

void
i2c_setup(void)
{
    // i2c setup
    irq_disable();
    irq_enable();
}

void
i2c_write(void)
{
    // i2c write
    irq_disable();
    irq_enable();
}

void
i2c_read(void)
{
    // i2c read
    irq_disable();
    irq_enable();
}

