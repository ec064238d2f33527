#ifndef __GENERIC_CANBUS_H
#define __GENERIC_CANBUS_H
// CAN bus interface
#include "autoconf.h"
struct canbus_msg { uint32_t id, dlc; uint8_t data[8]; };
int canbus_send(struct canbus_msg *msg);
void canbus_set_filter(uint32_t id);

#endif
