// generic/armcm_boot.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/armcm_boot.h"
#include "generic/irq.h"

void
reset_handler_stage_two(void)
{
    // reset handler stage two
    irq_disable();
    irq_enable();
}

