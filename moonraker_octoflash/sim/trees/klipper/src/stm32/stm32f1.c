// stm32/stm32f1.c: part of the simulated Klipper tree (moonraker-octoflash tests)
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
armcm_main_f1(void)
{
    // armcm main f1
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_crystal", "PD0,PD1");
