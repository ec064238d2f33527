// buttons.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
buttons_event(void)
{
    // buttons event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_buttons, "config_buttons oid=%c button_count=%c");
