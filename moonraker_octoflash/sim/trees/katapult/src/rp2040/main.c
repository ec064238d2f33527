// rp2040/main.c: part of the simulated katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"

void
rp2040_main_setup(void)
{
    // rp2040 main setup
    irq_disable();
    irq_enable();
}
