#ifndef __SCHED_H
#define __SCHED_H
// Task and timer scheduling
#include "autoconf.h"
#include "compiler.h"

struct timer { struct timer *next; uint32_t waketime; uint_fast8_t (*func)(struct timer*); };
void sched_add_timer(struct timer *t);
void sched_del_timer(struct timer *t);
void sched_main(void);

#endif
