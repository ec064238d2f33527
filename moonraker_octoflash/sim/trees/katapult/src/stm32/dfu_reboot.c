// stm32/dfu_reboot.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"

void
dfu_reboot(void)
{
    // dfu reboot
    irq_disable();
    irq_enable();
}

