// stm32/clockline.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"

void
enable_pclock_line(void)
{
    // enable pclock line
    irq_disable();
    irq_enable();
}

