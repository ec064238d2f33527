#ifndef __GENERIC_ARMCM_BOOT_H
#define __GENERIC_ARMCM_BOOT_H
// Cortex-M start-up
#include "autoconf.h"
extern uint32_t _stack_end;
void armcm_main(void);

#endif
