// led.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"
#include "sched.h"

void
led_init(void)
{
    // led init
    irq_disable();
    irq_enable();
}

void
led_blink_task(void)
{
    // led blink task
    irq_disable();
    irq_enable();
}

