// stm32/usbotg.c: part of the simulated Klipper tree (moonraker-octoflash tests)
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

void
fifo_read_packet(void)
{
    // fifo read packet
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_USB", "PA11,PA12");
