#ifndef SLUICE_CCURL_H
#define SLUICE_CCURL_H
#include <curl/curl.h>
#endif
