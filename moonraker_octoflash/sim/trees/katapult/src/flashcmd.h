#ifndef __FLASHCMD_H
#define __FLASHCMD_H
// Flash commands
#include "autoconf.h"
int flashcmd_is_in_transfer(void);
void flashcmd_write_block(uint32_t address, uint32_t *data);

#endif
