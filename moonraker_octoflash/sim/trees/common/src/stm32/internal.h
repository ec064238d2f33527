#ifndef __STM32_INTERNAL_H
#define __STM32_INTERNAL_H
// STM32 internal definitions
#include "autoconf.h"
#include "generic/irq.h"

void enable_pclock(uint32_t periph_base);
int is_enabled_pclock(uint32_t periph_base);
uint32_t get_pclock_frequency(uint32_t periph_base);
void gpio_peripheral(uint32_t gpio, uint32_t mode, int pullup);

#endif
