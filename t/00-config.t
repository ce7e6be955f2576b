#!/usr/bin/perl
# `nginx -t` with the module: a valid configuration passes; every misuse of a directive
# fails with a message that names the problem (and the file and line where nginx knows it).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen('server');
$t->write_file('bad.key', "# comment\n\nnot-a-key\n");
$t->write_file('loose.key', $t->read_file('server.key'), 0644);
$t->write_file('trusted', "# clients\n" . $t->keygen('client') . "\n");
$t->write_file('psk', "c3VwZXItc2VjcmV0LXNoYXJlZC1rZXktZm9yLXRlc3Q=\n");

sub conf_t {
    my ($body) = @_;
    $t->write_config("stream {\n$body\n}\n");
    return $t->test_config;
}

my $ok = <<'END';
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_AESGCM_SHA256;
    noise_handshake_timeout 5s;
    server {
        noise_listen 127.0.0.1:%%PORT_a%%;
        listen 127.0.0.1:%%PORT_b%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_trusted_keys %%TESTDIR%%/trusted;
        noise_prologue "app v1";
        noise_padding 64;
        return "ok";
    }
END
my ($rc, $out) = conf_t($ok);
is($rc, 0, 'valid configuration passes') or diag($out);
unlike($out, qr/warn/, 'no warnings for a mode 0600 key');

my @bad = (
    ['missing private key',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; return "x"; }',
     qr/"noise_private_key" is required by "Noise_XX_25519_ChaChaPoly_BLAKE2s" \(noise_listen in .*nginx\.conf:\d+\)/],
    ['malformed key names file and line',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/bad.key; return "x"; }',
     qr/"noise_private_key": \S+bad\.key:3: not a base64 key in \S+nginx\.conf:\d+/],
    ['unreadable key',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/missing.key; return "x"; }',
     qr/"noise_private_key": \S+missing\.key: No such file or directory/],
    ['bad protocol name',
     'noise_protocol Noise_XX_448_AESGCM_SHA256;',
     qr/"noise_protocol": .*only DH 25519 is supported/],
    ['fallback pattern',
     'noise_protocol Noise_XXfallback_25519_AESGCM_SHA256;',
     qr/fallback patterns are not supported/],
    ['K pattern on a server',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/server.key; noise_protocol Noise_KK_25519_AESGCM_SHA256; return "x"; }',
     qr/needs the client's key before the handshake/],
    ['psk pattern without psk',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/server.key; noise_protocol Noise_XXpsk3_25519_AESGCM_SHA256; return "x"; }',
     qr/"noise_psk" is required by "Noise_XXpsk3_25519_AESGCM_SHA256"/],
    ['padding out of range',
     'noise_padding 70000;',
     qr/"noise_padding" must be a size from 0 to 65517, not "70000"/],
    ['bad timeout',
     'noise_handshake_timeout soon;',
     qr/"noise_handshake_timeout": invalid time "soon"/],
    ['duplicate directive',
     'noise_padding 16; noise_padding 32;',
     qr/"noise_padding" directive is duplicate/],
    ['noise_listen with ssl',
     'server { noise_listen 127.0.0.1:%%PORT_a%% ssl; return "x"; }',
     qr/"noise_listen" takes the "listen" parameters except "ssl"/],
    ['noise_listen at stream level',
     'noise_listen 127.0.0.1:%%PORT_a%%;',
     qr/"noise_listen" directive is not allowed here/],
    ['noise_listen with a bad address',
     'server { noise_listen 127.0.0.1:99999; return "x"; }',
     qr/invalid port in "127\.0\.0\.1:99999" of the "listen" directive/],
    ['bad trusted keys line',
     'noise_trusted_keys %%TESTDIR%%/bad.key;',
     qr/"noise_trusted_keys": \S+bad\.key:3: not a base64 key/],
    ['noise_upstream value',
     'noise_upstream maybe;',
     qr/invalid value "maybe" in "noise_upstream"/],
    ['upstream pattern without private key',
     'server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; proxy_pass 127.0.0.1:1; }',
     qr/"noise_upstream_private_key" is required by "Noise_XX_25519_ChaChaPoly_BLAKE2s"/],
    ['upstream negotiation',
     'noise_upstream_negotiation protobuf;',
     qr/unknown negotiation "protobuf" \(virgil or empty\)/],
    ['psk upstream protocol with virgil negotiation',
     'server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; noise_upstream_protocol Noise_NNpsk0_25519_AESGCM_SHA256; noise_upstream_psk %%TESTDIR%%/psk; proxy_pass 127.0.0.1:1; }',
     qr/cannot be named in virgil negotiation data; set "noise_upstream_negotiation empty"/],
    ['server key with a bad key',
     'noise_upstream_server_key 127.0.0.1:9 AAAA;',
     qr/"noise_upstream_server_key": \S*AAAA: No such file or directory/],
);
for my $case (@bad) {
    my ($name, $body, $re) = @$case;
    my ($rc, $out) = conf_t($body);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message") or diag($out);
}

($rc, $out) = conf_t('server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/loose.key; return "x"; }');
is($rc, 0, 'group-readable key still loads');
like($out, qr/\[warn\].*"noise_private_key": \S+loose\.key is readable by group or others \(mode 0644\); chmod 600 it/,
    'group-readable key warns like ssh');

($rc, $out) = conf_t('server { noise_listen %%PORT_w%%; noise_private_key %%TESTDIR%%/server.key; return "x"; } '
    . 'server { listen 127.0.0.1:%%PORT_w%%; return "y"; }');
isnt($rc, 0, 'noise address merged into another socket fails');

done_testing;
