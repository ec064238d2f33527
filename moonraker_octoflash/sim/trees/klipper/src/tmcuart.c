// tmcuart.c: part of the simulated Klipper tree (moonraker-octoflash tests)
//
// Not real firmware: scripts/simcc.py 'compiles' it.

#include "command.h"
#include "sched.h"
#include "stm32/gpio.h"

void
tmcuart_send_event(void)
{
    // tmcuart send event
    irq_disable();
    irq_enable();
}

void
tmcuart_recv_event(void)
{
    // tmcuart recv event
    irq_disable();
    irq_enable();
}

DECL_COMMAND(command_config_tmcuart, "config_tmcuart oid=%c rx_pin=%u pull_up=%c tx_pin=%u bit_time=%u");
