// thermocouple.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"

void
thermocouple_event(void)
{
    // thermocouple event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_thermocouple, "config_thermocouple oid=%c spi_oid=%c thermocouple_type=%c");
