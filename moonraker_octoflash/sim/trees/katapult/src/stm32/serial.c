// stm32/serial.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"

void
serial_init(void)
{
    // serial init
    irq_disable();
    irq_enable();
}

