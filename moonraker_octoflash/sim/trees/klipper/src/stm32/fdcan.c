// stm32/fdcan.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "generic/canbus.h"

void
fdcan_init(void)
{
    // fdcan init
    irq_disable();
    irq_enable();
}

void
fdcan_irq_handler(void)
{
    // fdcan irq handler
    irq_disable();
    irq_enable();
}

void
fdcan_set_filter(void)
{
    // fdcan set filter
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_CAN", "PD0,PD1");
