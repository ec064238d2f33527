// stm32/usbfs.c: part of the simulated Klipper tree (moonraker-octoflash tests)
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

void
usb_irq_handler(void)
{
    // usb irq handler
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_USB", "PA11,PA12");
