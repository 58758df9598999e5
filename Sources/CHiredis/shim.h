// hiredis 0.14 (libhiredis-dev). Only the synchronous, non-variadic API is used from Swift:
// redisConnectWithTimeout, redisSetTimeout, redisEnableKeepAlive, redisAppendCommandArgv,
// redisGetReply, freeReplyObject, redisFree.
#include <hiredis/hiredis.h>
