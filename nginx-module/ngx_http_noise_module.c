/*
 * ngx_http_noise_module: the NoiseSocket context of http requests that came through a
 * stream noise_listen server and `pass` ($noise_client_key and friends), and the
 * noise_status location (the module's counters in the Prometheus text format) and the
 * noise_keys_api location (the key zone's API).
 *
 * Thin glue only, in the same .so as ngx_stream_noise_module (one load_module loads both):
 * the module definition and the directive table. The logic is Rust (src/nginx/http/,
 * src/nginx/http/status.rs) behind extern "C".
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


ngx_int_t ngx_http_noise_preconfiguration(ngx_conf_t *cf);
char *ngx_http_noise_status(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
char *ngx_http_noise_keys_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void *ngx_http_noise_create_loc_conf(ngx_conf_t *cf);


static ngx_command_t  ngx_http_noise_commands[] = {

    { ngx_string("noise_status"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_noise_status,
      0,
      0,
      NULL },

    { ngx_string("noise_keys_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_noise_keys_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_noise_module_ctx = {
    ngx_http_noise_preconfiguration,       /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_noise_create_loc_conf,        /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_noise_module = {
    NGX_MODULE_V1,
    &ngx_http_noise_module_ctx,            /* module context */
    ngx_http_noise_commands,               /* module directives */
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
