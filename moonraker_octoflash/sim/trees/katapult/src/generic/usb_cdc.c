// generic/usb_cdc.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/usb_cdc.h"
#include "command.h"

void
usb_bulk_in_task(void)
{
    // usb bulk in task
    irq_disable();
    irq_enable();
}

void
usb_bulk_out_task(void)
{
    // usb bulk out task
    irq_disable();
    irq_enable();
}

