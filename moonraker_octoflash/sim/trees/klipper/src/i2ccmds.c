// i2ccmds.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
i2cdev_write(void)
{
    // i2cdev write
    irq_disable();
    irq_enable();
}

void
i2cdev_read(void)
{
    // i2cdev read
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_i2c, "config_i2c oid=%c");
