#ifndef __BOOTENTRY_H
#define __BOOTENTRY_H
// Decide whether to stay in the bootloader
#include "autoconf.h"
int bootentry_check(void);
void bootentry_request(void);

#endif
