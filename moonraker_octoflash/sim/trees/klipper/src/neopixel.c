// neopixel.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
neopixel_send(void)
{
    // neopixel send
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_neopixel, "config_neopixel oid=%c pin=%u data_size=%hu bit_max_ticks=%u reset_min_ticks=%u");
