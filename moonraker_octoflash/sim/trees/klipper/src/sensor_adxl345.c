// sensor_adxl345.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
adxl_query(void)
{
    // adxl query
    irq_disable();
    irq_enable();
}

void
adxl_start(void)
{
    // adxl start
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_adxl345, "config_adxl345 oid=%c spi_oid=%c");
