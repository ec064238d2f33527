#ifndef __GENERIC_SERIAL_IRQ_H
#define __GENERIC_SERIAL_IRQ_H
// Serial port with interrupts
void serial_enable_tx_irq(void);
int serial_get_tx_byte(uint8_t *pdata);

#endif
