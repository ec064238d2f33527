// stm32/hard_pwm.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"
#include "command.h"

void
gpio_pwm_setup(void)
{
    // gpio pwm setup
    irq_disable();
    irq_enable();
}

void
gpio_pwm_write(void)
{
    // gpio pwm write
    irq_disable();
    irq_enable();
}

DECL_CONSTANT("PWM_MAX", 255);
