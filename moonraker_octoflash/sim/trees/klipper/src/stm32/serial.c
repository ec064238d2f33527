// stm32/serial.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/serial_irq.h"

void
serial_init(void)
{
    // serial init
    irq_disable();
    irq_enable();
}

void
serial_irq_handler(void)
{
    // serial irq handler
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_serial", "PA10,PA9");
