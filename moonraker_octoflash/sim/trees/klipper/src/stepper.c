// stepper.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
stepper_event(void)
{
    // stepper event
    irq_disable();
    irq_enable();
}

void
stepper_load_next(void)
{
    // stepper load next
    irq_disable();
    irq_enable();
}

void
stepper_stop(void)
{
    // stepper stop
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_stepper, "config_stepper oid=%c step_pin=%c dir_pin=%c invert_step=%c step_pulse_ticks=%u");
DECL_COMMAND(command_queue_step, "queue_step oid=%c interval=%u count=%hu add=%hi");
