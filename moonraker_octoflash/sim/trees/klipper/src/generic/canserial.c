// generic/canserial.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "generic/canbus.h"
#include "command.h"
#include "sched.h"

void
canserial_notify_tx(void)
{
    // canserial notify tx
    irq_disable();
    irq_enable();
}

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

DECL_CONSTANT("RECEIVE_WINDOW", 192);
DECL_CONSTANT("CANBUS_FREQUENCY", CONFIG_CANBUS_FREQUENCY);
