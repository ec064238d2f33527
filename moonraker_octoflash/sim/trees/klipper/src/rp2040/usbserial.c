// rp2040/usbserial.c: part of the simulated klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
rp2040_usbserial_setup(void)
{
    // rp2040 usbserial setup
    irq_disable();
    irq_enable();
}
