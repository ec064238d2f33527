// generic/serial_irq.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/serial_irq.h"
#include "command.h"
#include "sched.h"

void
serial_rx_byte(void)
{
    // serial rx byte
    irq_disable();
    irq_enable();
}

void
console_sendf(void)
{
    // console sendf
    irq_disable();
    irq_enable();
}

DECL_CONSTANT("SERIAL_BAUD", CONFIG_SERIAL_BAUD);
