// spicmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
spidev_transfer(void)
{
    // spidev transfer
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_spi, "config_spi oid=%c pin=%u cs_active_high=%c");
