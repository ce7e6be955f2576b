/*
 * ngx_stream_noise_module: NoiseSocket for nginx stream.
 *
 * Thin glue only: the module definition and the directive table. Every handler is Rust
 * (src/nginx/module.rs) behind extern "C"; all directives share one parser that dispatches
 * on the directive's name.
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_stream.h>


char *ngx_stream_noise_directive(ngx_conf_t *cf, ngx_command_t *cmd, void *conf);
void *ngx_stream_noise_create_main_conf(ngx_conf_t *cf);
void *ngx_stream_noise_create_srv_conf(ngx_conf_t *cf);
char *ngx_stream_noise_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child);
ngx_int_t ngx_stream_noise_preconfiguration(ngx_conf_t *cf);
ngx_int_t ngx_stream_noise_postconfiguration(ngx_conf_t *cf);
ngx_int_t ngx_stream_noise_init_module(ngx_cycle_t *cycle);
ngx_int_t ngx_stream_noise_init_process(ngx_cycle_t *cycle);
void ngx_stream_noise_exit_process(ngx_cycle_t *cycle);


#define NGX_STREAM_NOISE_ANY  (NGX_STREAM_MAIN_CONF|NGX_STREAM_SRV_CONF)

#define ngx_stream_noise_command(name, type)                                  \
    { ngx_string(name), type, ngx_stream_noise_directive,                     \
      NGX_STREAM_SRV_CONF_OFFSET, 0, NULL }


static ngx_command_t  ngx_stream_noise_commands[] = {

    /* server side */
    ngx_stream_noise_command("noise_listen", NGX_STREAM_SRV_CONF|NGX_CONF_1MORE),
    ngx_stream_noise_command("noise_protocol", NGX_STREAM_NOISE_ANY|NGX_CONF_1MORE),
    ngx_stream_noise_command("noise_private_key", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_key_agent", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE12),
    ngx_stream_noise_command("noise_trusted_keys", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_revoked_keys", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_psk", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_prologue", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_padding", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_handshake_timeout",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_limit_conn_per_key",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_multiplex", NGX_STREAM_NOISE_ANY|NGX_CONF_FLAG),
    ngx_stream_noise_command("noise_multiplex_trust_origin",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_FLAG),

    /* client keys decided by a shared-memory zone (docs/key-zone.md) */
    ngx_stream_noise_command("noise_keys_zone", NGX_STREAM_MAIN_CONF|NGX_CONF_2MORE),
    ngx_stream_noise_command("noise_keys", NGX_STREAM_NOISE_ANY|NGX_CONF_1MORE),

    /* keys the zone does not have, asked of an HTTP authority (miss=lookup) */
    ngx_stream_noise_command("noise_auth_request", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_auth_request_timeout",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_auth_request_fail",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_auth_request_concurrency",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE12),
    ngx_stream_noise_command("noise_auth_cache_valid",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_1MORE),

    /* upstream side */
    ngx_stream_noise_command("noise_upstream", NGX_STREAM_NOISE_ANY|NGX_CONF_FLAG),
    ngx_stream_noise_command("noise_upstream_protocol",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_private_key",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_key_agent",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE12),
    ngx_stream_noise_command("noise_upstream_trusted_keys",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_server_key",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE2),
    ngx_stream_noise_command("noise_upstream_negotiation",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_revoked_keys",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_psk", NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_prologue",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_padding",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_handshake_timeout",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_TAKE1),
    ngx_stream_noise_command("noise_upstream_key_confirmation",
                             NGX_STREAM_NOISE_ANY|NGX_CONF_FLAG),

      ngx_null_command
};


static ngx_stream_module_t  ngx_stream_noise_module_ctx = {
    ngx_stream_noise_preconfiguration,     /* preconfiguration */
    ngx_stream_noise_postconfiguration,    /* postconfiguration */

    ngx_stream_noise_create_main_conf,     /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_stream_noise_create_srv_conf,      /* create server configuration */
    ngx_stream_noise_merge_srv_conf        /* merge server configuration */
};


ngx_module_t  ngx_stream_noise_module = {
    NGX_MODULE_V1,
    &ngx_stream_noise_module_ctx,          /* module context */
    ngx_stream_noise_commands,             /* module directives */
    NGX_STREAM_MODULE,                     /* module type */
    NULL,                                  /* init master */
    ngx_stream_noise_init_module,          /* init module */
    ngx_stream_noise_init_process,         /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_stream_noise_exit_process,         /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};
