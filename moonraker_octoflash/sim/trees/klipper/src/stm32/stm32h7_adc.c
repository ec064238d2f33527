// stm32/stm32h7_adc.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/gpio.h"
#include "command.h"

void
gpio_adc_setup(void)
{
    // gpio adc setup
    irq_disable();
    irq_enable();
}

void
gpio_adc_sample(void)
{
    // gpio adc sample
    irq_disable();
    irq_enable();
}

void
adc_calibrate(void)
{
    // adc calibrate
    irq_disable();
    irq_enable();
}

DECL_CONSTANT("ADC_MAX", 4095);
