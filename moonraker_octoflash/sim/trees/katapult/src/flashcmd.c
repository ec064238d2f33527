// flashcmd.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "flashcmd.h"
#include "command.h"

void
flashcmd_write_block(void)
{
    // flashcmd write block
    irq_disable();
    irq_enable();
}

void
flashcmd_complete(void)
{
    // flashcmd complete
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_write_block, "send_block");
DECL_COMMAND(command_read_block, "request_block");
DECL_COMMAND(command_eof, "send_eof");
