// stm32/dfu_reboot.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "command.h"

void
dfu_reboot(void)
{
    // dfu reboot
    irq_disable();
    irq_enable();
}

void
dfu_reboot_check(void)
{
    // dfu reboot check
    irq_disable();
    irq_enable();
}

