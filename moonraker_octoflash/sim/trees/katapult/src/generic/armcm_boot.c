// generic/armcm_boot.c: part of the simulated Katapult tree (moonraker-octoflash tests)
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
application_read_flash(void)
{
    // application read flash
    irq_disable();
    irq_enable();
}
