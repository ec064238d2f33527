// generic/canserial.c: part of the simulated Katapult tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/canbus.h"
#include "command.h"

void
canserial_process_data(void)
{
    // canserial process data
    irq_disable();
    irq_enable();
}

void
can_process_query(void)
{
    // can process query
    irq_disable();
    irq_enable();
}

