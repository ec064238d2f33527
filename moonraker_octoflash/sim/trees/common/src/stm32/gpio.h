#ifndef __STM32_GPIO_H
#define __STM32_GPIO_H
// STM32 GPIO
#include "stm32/internal.h"
struct gpio_out { void *regs; uint32_t bit; };
struct gpio_out gpio_out_setup(uint32_t pin, uint32_t val);
void gpio_out_write(struct gpio_out g, uint32_t val);

#endif
