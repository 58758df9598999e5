#ifndef SLUICE_CCURL_H
#define SLUICE_CCURL_H

// Thin C shim for SluiceUpstream. Swift cannot call C variadic functions, so every variadic libcurl
// entry point the engine uses gets one typed, non-variadic wrapper per argument kind; besides those,
// one question only OpenSSL answers (the ALPN protocol of curl's TLS connection). Nothing else lives
// here: all logic and type safety is in Swift.
//
// The Linux readiness APIs (epoll, timerfd, eventfd) that drive the engine threads are not part of
// Swift's Glibc module, so their headers are re-exported from here too.

#include <curl/curl.h>

#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#endif

// MARK: curl_easy_setopt

CURLcode sluice_curl_easy_setopt_long(CURL *handle, CURLoption option, long value);
/// For options taking a data pointer or a C string (libcurl copies strings it is given).
CURLcode sluice_curl_easy_setopt_pointer(CURL *handle, CURLoption option, const void *value);
CURLcode sluice_curl_easy_setopt_off_t(CURL *handle, CURLoption option, curl_off_t value);
/// For CURLOPT_WRITEFUNCTION and CURLOPT_HEADERFUNCTION (both take a curl_write_callback).
CURLcode sluice_curl_easy_setopt_write_function(CURL *handle, CURLoption option, curl_write_callback value);
/// For CURLOPT_CLOSESOCKETFUNCTION.
CURLcode sluice_curl_easy_setopt_closesocket_function(CURL *handle, curl_closesocket_callback value);
/// For CURLOPT_PREREQFUNCTION (NULL: none).
CURLcode sluice_curl_easy_setopt_prereq_function(CURL *handle, curl_prereq_callback value);

// MARK: curl_multi_setopt

CURLMcode sluice_curl_multi_setopt_long(CURLM *multi, CURLMoption option, long value);
CURLMcode sluice_curl_multi_setopt_pointer(CURLM *multi, CURLMoption option, void *value);
CURLMcode sluice_curl_multi_setopt_socket_function(CURLM *multi, curl_socket_callback value);
CURLMcode sluice_curl_multi_setopt_timer_function(CURLM *multi, curl_multi_timer_callback value);

// MARK: curl_easy_getinfo

CURLcode sluice_curl_easy_getinfo_long(CURL *handle, CURLINFO info, long *value);
CURLcode sluice_curl_easy_getinfo_pointer(CURL *handle, CURLINFO info, void **value);
CURLcode sluice_curl_easy_getinfo_off_t(CURL *handle, CURLINFO info, curl_off_t *value);

// MARK: TLS

/// Whether the TLS connection of `handle`'s current transfer agreed on HTTP/2 by ALPN: 1 (it chose
/// "h2"), 0 (it chose something else, or nothing), -1 (cannot tell: no TLS connection, or a TLS
/// backend other than OpenSSL). For CURLOPT_PREREQFUNCTION, where the connection is up and nothing
/// was sent yet (CURLINFO_HTTP_VERSION is only known once the response arrives).
int sluice_curl_tls_alpn_is_h2(CURL *handle);

// MARK: Macros Swift does not import (they contain casts)

/// CURL_WRITEFUNC_PAUSE: returned from a write callback to pause without consuming the bytes.
size_t sluice_curl_writefunc_pause(void);

#endif
