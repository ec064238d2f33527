#ifndef __COMMAND_H
#define __COMMAND_H
// Host command dispatch and compile-time declarations
#include "compiler.h"

#define DECL_COMMAND(FUNC, MSG)
#define DECL_CONSTANT(NAME, VALUE)
#define DECL_CONSTANT_STR(NAME, VALUE)
#define DECL_ENUMERATION(ENUM, NAME, VALUE)
void command_sendf(const char *fmt, ...);

#endif
