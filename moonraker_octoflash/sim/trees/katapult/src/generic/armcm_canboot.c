// generic/armcm_canboot.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/armcm_boot.h"
#include "generic/irq.h"

void
reset_handler(void)
{
    // reset handler
    irq_disable();
    irq_enable();
}

void
jump_to_application(void)
{
    // jump to application
    irq_disable();
    irq_enable();
}

