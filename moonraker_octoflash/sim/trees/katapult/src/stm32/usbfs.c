// stm32/usbfs.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/usb_cdc.h"

void
usbfs_init(void)
{
    // usbfs init
    irq_disable();
    irq_enable();
}

