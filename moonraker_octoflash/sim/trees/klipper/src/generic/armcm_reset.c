// generic/armcm_reset.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/irq.h"
#include "command.h"

void
try_request_canboot(void)
{
    // try request canboot
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_reset, "reset");
