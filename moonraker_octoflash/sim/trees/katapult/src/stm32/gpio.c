// stm32/gpio.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for stm32/clockline.c, stm32/dfu_reboot.c (one compile instead of 3).

#include "stm32/gpio.h"
#include "stm32/internal.h"

void
gpio_out_setup(void)
{
    // gpio out setup
    irq_disable();
    irq_enable();
}

void
gpio_in_setup(void)
{
    // gpio in setup
    irq_disable();
    irq_enable();
}

void
enable_pclock_line(void)
{
    // enable pclock line
    irq_disable();
    irq_enable();
}

void
dfu_reboot(void)
{
    // dfu reboot
    irq_disable();
    irq_enable();
}
