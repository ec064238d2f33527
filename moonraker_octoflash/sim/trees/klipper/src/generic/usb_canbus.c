// generic/usb_canbus.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/canbus.h"
#include "generic/usb_cdc.h"
#include "command.h"
#include "sched.h"

void
usbcan_rx_task(void)
{
    // usbcan rx task
    irq_disable();
    irq_enable();
}

void
usbcan_tx_task(void)
{
    // usbcan tx task
    irq_disable();
    irq_enable();
}

void
usb_notify_bulk_in(void)
{
    // usb notify bulk in
    irq_disable();
    irq_enable();
}

DECL_CONSTANT("CANBUS_BRIDGE", 1);
