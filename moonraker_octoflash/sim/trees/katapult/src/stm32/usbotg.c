// stm32/usbotg.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/usb_cdc.h"

void
usbotg_init(void)
{
    // usbotg init
    irq_disable();
    irq_enable();
}

void
otg_irq_handler(void)
{
    // otg irq handler
    irq_disable();
    irq_enable();
}

