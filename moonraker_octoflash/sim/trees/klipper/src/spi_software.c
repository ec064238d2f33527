// spi_software.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "stm32/gpio.h"

void
spi_software_transfer(void)
{
    // spi software transfer
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_spi_set_software_bus, "spi_set_software_bus oid=%c miso_pin=%u mosi_pin=%u sclk_pin=%u mode=%u rate=%u");
