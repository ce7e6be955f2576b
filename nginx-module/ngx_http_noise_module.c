/*
 * ngx_http_noise_module: the NoiseSocket context of http requests that came through a
 * stream noise_listen server and `pass` ($noise_client_key and friends).
 *
 * Thin glue only, in the same .so as ngx_stream_noise_module (one load_module loads both):
 * the module definition. The variables are Rust (src/nginx/http.rs) behind extern "C".
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_noise_preconfiguration(ngx_conf_t *cf);


static ngx_http_module_t  ngx_http_noise_module_ctx = {
    ngx_http_noise_preconfiguration,       /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_noise_module = {
    NGX_MODULE_V1,
    &ngx_http_noise_module_ctx,            /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};
