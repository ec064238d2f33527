// stm32/stm32g0.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "command.h"

void
clock_setup(void)
{
    // clock setup
    irq_disable();
    irq_enable();
}

void
armcm_main_g0(void)
{
    // armcm main g0
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_crystal", "PF0,PF1");
