// deployer.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "flashcmd.h"

void
deployer_main(void)
{
    // deployer main
    irq_disable();
    irq_enable();
}

void
deployer_copy_payload(void)
{
    // deployer copy payload
    irq_disable();
    irq_enable();
}

void
deployer_verify(void)
{
    // deployer verify
    irq_disable();
    irq_enable();
}

