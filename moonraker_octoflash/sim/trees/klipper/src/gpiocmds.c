// gpiocmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for initial_pins.c, endstop.c (one compile instead of 3).

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
digital_out_event(void)
{
    // digital out event
    irq_disable();
    irq_enable();
}

void
digital_out_load_event(void)
{
    // digital out load event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_digital_out, "config_digital_out oid=%c pin=%u value=%c default_value=%c max_duration=%u");
DECL_COMMAND(command_queue_digital_out, "queue_digital_out oid=%c clock=%u on_ticks=%u");

void
initial_pins_setup(void)
{
    // initial pins setup
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("INITIAL_PINS", CONFIG_INITIAL_PINS);

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
