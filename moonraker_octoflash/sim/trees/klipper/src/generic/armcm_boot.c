// generic/armcm_boot.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for generic/armcm_reset.c (one compile instead of 2).

#include "generic/armcm_boot.h"
#include "generic/irq.h"
#include "command.h"

void
reset_handler_stage_two(void)
{
    // reset handler stage two
    irq_disable();
    irq_enable();
}

void
armcm_main(void)
{
    // armcm main
    irq_disable();
    irq_enable();
}

void
try_request_canboot(void)
{
    // try request canboot
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_reset, "reset");
