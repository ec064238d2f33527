// endstop.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
endstop_event(void)
{
    // endstop event
    irq_disable();
    irq_enable();
}

void
endstop_oversample_event(void)
{
    // endstop oversample event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_endstop, "config_endstop oid=%c pin=%c pull_up=%c");
