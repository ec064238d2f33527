// pwmcmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
pwm_event(void)
{
    // pwm event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_pwm_out, "config_pwm_out oid=%c pin=%u cycle_ticks=%u value=%hu default_value=%hu max_duration=%u");
