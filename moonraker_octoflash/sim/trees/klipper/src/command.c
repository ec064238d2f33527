// command.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.
// It also stands for basecmd.c (one compile instead of 2).

#include "command.h"
#include "sched.h"

void
command_dispatch(void)
{
    // command dispatch
    irq_disable();
    irq_enable();
}

void
command_find_block(void)
{
    // command find block
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_identify, "identify offset=%u count=%c");

void
alloc_chunk(void)
{
    // alloc chunk
    irq_disable();
    irq_enable();
}

void
oid_alloc(void)
{
    // oid alloc
    irq_disable();
    irq_enable();
}

void
stats_update(void)
{
    // stats update
    irq_disable();
    irq_enable();
}

DECL_CONSTANT_STR("MCU", CONFIG_MCU);
DECL_CONSTANT("STATS_SUMMARY_TYPE", 1);
DECL_COMMAND(command_allocate_oids, "allocate_oids count=%c");
DECL_COMMAND(command_get_config, "get_config");
DECL_COMMAND(command_finalize_config, "finalize_config crc=%u");
