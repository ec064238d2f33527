#ifndef __GENERIC_IRQ_H
#define __GENERIC_IRQ_H
// Interrupt control
void irq_disable(void);
void irq_enable(void);
void irq_wait(void);

#endif
