// stm32/sdio.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"

void
sdio_setup(void)
{
    // sdio setup
    irq_disable();
    irq_enable();
}

void
sdio_send_command(void)
{
    // sdio send command
    irq_disable();
    irq_enable();
}

