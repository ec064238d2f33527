#ifndef __GENERIC_USB_CDC_H
#define __GENERIC_USB_CDC_H
// USB CDC-ACM endpoints
int usb_send_bulk_in(void *data, uint_fast8_t len);
int usb_read_bulk_out(void *data, uint_fast8_t max_len);

#endif
