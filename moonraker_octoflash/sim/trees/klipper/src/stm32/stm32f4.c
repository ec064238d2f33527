// stm32/stm32f4.c: part of the simulated Klipper tree (moonraker-octoflash tests)
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
armcm_main_f4(void)
{
    // armcm main f4
    irq_disable();
    irq_enable();
}

void
enable_clock_stm32f446(void)
{
    // enable clock stm32f446
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("RESERVE_PINS_crystal", "PH0,PH1");
