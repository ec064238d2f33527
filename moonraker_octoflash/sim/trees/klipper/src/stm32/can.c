// stm32/can.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/canbus.h"

void
can_init(void)
{
    // can init
    irq_disable();
    irq_enable();
}

void
can_irq_handler(void)
{
    // can irq handler
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_CAN", "PD0,PD1");
