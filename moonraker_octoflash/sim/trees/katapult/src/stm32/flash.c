// stm32/flash.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "stm32/internal.h"
#include "flashcmd.h"

void
flash_write_block(void)
{
    // flash write block
    irq_disable();
    irq_enable();
}

void
flash_complete(void)
{
    // flash complete
    irq_disable();
    irq_enable();
}

void
flash_unlock(void)
{
    // flash unlock
    irq_disable();
    irq_enable();
}

