// generic/armcm_reset.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/irq.h"
#include "command.h"

void
application_read_flash(void)
{
    // application read flash
    irq_disable();
    irq_enable();
}

