// stm32/stm32h7.c: part of the simulated Klipper tree (moonraker-octoflash tests)
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
armcm_main_h7(void)
{
    // armcm main h7
    irq_disable();
    irq_enable();
}

void
pll_setup(void)
{
    // pll setup
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_crystal", "PH0,PH1");
