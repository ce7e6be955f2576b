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
$t->write_file('empty-list', "# nobody yet\n\n");
$t->write_file('huge.key', 'A' x 100_000);
$t->write_file('psk', "c3VwZXItc2VjcmV0LXNoYXJlZC1rZXktZm9yLXRlc3Q=\n");
$t->write_file('two', $t->keygen('c1') . "\n" . $t->keygen('c2') . "\n");
$t->write_file('one-of-two', $t->read_file('c1.pub'));

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
     qr/needs the client's key before the handshake; set "noise_trusted_keys"/],
    ['psk pattern without psk',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/server.key; noise_protocol Noise_XXpsk3_25519_AESGCM_SHA256; return "x"; }',
     qr/"noise_psk" is required by "Noise_XXpsk3_25519_AESGCM_SHA256"/],
    ['private key from /dev/zero (read with a size cap)',
     'noise_private_key /dev/zero;',
     qr/"noise_private_key": \/dev\/zero: larger than 4096 bytes: not a key file/],
    ['trusted keys from /dev/zero',
     'noise_trusted_keys /dev/zero;',
     qr/"noise_trusted_keys": \/dev\/zero: larger than 1048576 bytes: not a key file/],
    ['huge psk file',
     'noise_upstream_psk %%TESTDIR%%/huge.key;',
     qr/"noise_upstream_psk": \S+huge\.key: larger than 4096 bytes/],
    ['empty trusted-keys file',
     'noise_trusted_keys %%TESTDIR%%/empty-list;',
     qr/"noise_trusted_keys": \S+empty-list: no key in the file/],
    ['empty upstream trusted-keys file',
     'noise_upstream_trusted_keys %%TESTDIR%%/empty-list;',
     qr/"noise_upstream_trusted_keys": \S+empty-list: no key in the file/],
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
     qr/"noise_upstream_private_key" is required by "Noise_XX_25519_ChaChaPoly_BLAKE2s" \(noise_upstream on in \S+nginx\.conf:\d+\)/],
    ['upstream negotiation',
     'noise_upstream_negotiation protobuf;',
     qr/unknown negotiation "protobuf" \(virgil or empty\)/],
    ['psk upstream protocol with virgil negotiation',
     'server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; noise_upstream_protocol Noise_NNpsk0_25519_AESGCM_SHA256; noise_upstream_psk %%TESTDIR%%/psk; proxy_pass 127.0.0.1:1; }',
     qr/cannot be named in virgil negotiation data; set "noise_upstream_negotiation empty"/],
    ['upstream IK without any server key',
     'server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; noise_upstream_private_key %%TESTDIR%%/server.key; noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s; proxy_pass 127.0.0.1:1; }',
     qr/"noise_upstream_server_key" is required by "Noise_IK_25519_ChaChaPoly_BLAKE2s" .*\(noise_upstream on in \S+nginx\.conf:\d+\)/],
    ['server key without a port',
     'noise_upstream_server_key 127.0.0.1 %%TESTDIR%%/server.pub;',
     qr/"noise_upstream_server_key": no port in "127\.0\.0\.1"/],
    ['server key with a bad key',
     'noise_upstream_server_key 127.0.0.1:9 AAAA;',
     qr/"noise_upstream_server_key": \S*AAAA: No such file or directory/],
    # Configurations that could never complete a handshake.
    ['KN whose only trusted key is revoked',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_KN_25519_ChaChaPoly_BLAKE2s; noise_trusted_keys %%TESTDIR%%/trusted; noise_revoked_keys %%TESTDIR%%/trusted; return "x"; }',
     qr/the only key in "noise_trusted_keys" \S+trusted is also in "noise_revoked_keys" \S+trusted, so no client can complete a handshake; trust a key that is not revoked \(noise_listen in \S+nginx\.conf:\d+\)/],
    ['KX whose only trusted key is revoked',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_KX_25519_ChaChaPoly_BLAKE2s; noise_private_key %%TESTDIR%%/server.key; noise_trusted_keys %%TESTDIR%%/trusted; noise_revoked_keys %%TESTDIR%%/trusted; return "x"; }',
     qr/the only key in "noise_trusted_keys" \S+trusted is also in "noise_revoked_keys" \S+trusted, so no client can complete a handshake; trust a key that is not revoked \(noise_listen in \S+nginx\.conf:\d+\)/],
    ['XX whose every trusted key is revoked (stream level)',
     'noise_trusted_keys %%TESTDIR%%/two; noise_revoked_keys %%TESTDIR%%/two; server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/server.key; return "x"; }',
     qr/each of the 2 keys in "noise_trusted_keys" \S+two is also in "noise_revoked_keys" \S+two, so no client can complete a handshake; trust a key that is not revoked \(noise_listen in \S+nginx\.conf:\d+\)/],
    ['trusted keys with only patterns in which the client has no key',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_NN_25519_ChaChaPoly_BLAKE2s Noise_NK_25519_ChaChaPoly_BLAKE2s Noise_NX_25519_AESGCM_SHA256; noise_private_key %%TESTDIR%%/server.key; noise_trusted_keys %%TESTDIR%%/trusted; return "x"; }',
     qr/"noise_trusted_keys" admits only clients that have a static key, and in none of "Noise_NN_25519_ChaChaPoly_BLAKE2s Noise_NK_25519_ChaChaPoly_BLAKE2s Noise_NX_25519_AESGCM_SHA256" does the client have one; add a protocol in which it does \(XX, IK, KK, \.\.\.\) to "noise_protocol" or remove "noise_trusted_keys" \(noise_listen in \S+nginx\.conf:\d+\)/],
    ['trusted keys with only a psk pattern in which the client has no key',
     'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s; noise_psk %%TESTDIR%%/psk; noise_trusted_keys %%TESTDIR%%/trusted; return "x"; }',
     qr/"noise_trusted_keys" admits only clients that have a static key, and in none of "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s" does the client have one/],
);
for my $case (@bad) {
    my ($name, $body, $re) = @$case;
    my ($rc, $out) = conf_t($body);
    isnt($rc, 0, "$name: nginx -t fails");
    like($out, $re, "$name: message") or diag($out);
}

# Still possible: some trusted key is not revoked, some protocol has the client's key.
($rc, $out) = conf_t('server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_NN_25519_ChaChaPoly_BLAKE2s Noise_KK_25519_ChaChaPoly_BLAKE2s; '
    . 'noise_private_key %%TESTDIR%%/server.key; noise_trusted_keys %%TESTDIR%%/two; noise_revoked_keys %%TESTDIR%%/one-of-two; return "x"; }');
is($rc, 0, 'KK beside NN, one of two trusted keys revoked: nginx -t passes') or diag($out);

$t->keygen('gw');
my $server_pub = $t->read_file('server.pub') =~ s/\s+//gr;
($rc, $out) = conf_t(qq{upstream two { server 127.0.0.1:%%PORT_u1%%; server 127.0.0.1:%%PORT_u2%%; }
    server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; noise_upstream_private_key %%TESTDIR%%/gw.key;
             noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;
             noise_upstream_server_key 127.0.0.1:%%PORT_u1%% $server_pub; proxy_pass two; }});
isnt($rc, 0, 'IK group with a server lacking a key: nginx -t fails');
my $u2 = $t->port('u2');
like($out, qr/no "noise_upstream_server_key" for 127\.0\.0\.1:$u2 of upstream "two", which "Noise_IK_25519_ChaChaPoly_BLAKE2s" needs \(server at \S+nginx\.conf:\d+\)/,
    'names the server, the group and the protocol') or diag($out);

($rc, $out) = conf_t(qq{map \$remote_addr \$target { default 127.0.0.1:%%PORT_u1%%; }
    server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; noise_upstream_private_key %%TESTDIR%%/gw.key;
             proxy_pass \$target; }});
is($rc, 0, 'proxy_pass to a variable: nginx -t passes');
like($out, qr/\[warn\].*"noise_upstream on" with "proxy_pass" to a variable in the server at \S+nginx\.conf:\d+: targets that are not upstream groups will be refused/,
    'proxy_pass to a variable: warns that bare addresses are refused') or diag($out);

($rc, $out) = conf_t('server { noise_listen 127.0.0.1:%%PORT_a%%; noise_private_key %%TESTDIR%%/loose.key; return "x"; }');
is($rc, 0, 'group-readable key still loads');
like($out, qr/\[warn\].*"noise_private_key": \S+loose\.key is readable by group or others \(mode 0644\); chmod 600 it/,
    'group-readable key warns like ssh');

($rc, $out) = conf_t('server { noise_listen %%PORT_w%%; noise_private_key %%TESTDIR%%/server.key; return "x"; } '
    . 'server { listen 127.0.0.1:%%PORT_w%%; return "y"; }');
isnt($rc, 0, 'noise address merged into another socket fails');
like($out, qr/"noise_listen 0\.0\.0\.0:\d+" in \S+nginx\.conf:\d+ shares its socket with a plain "listen" of the same port; add the "bind" parameter to the plain one/,
    'merged socket: message names the noise_listen and the fix');

# Two servers on one address (nginx 1.25.5+ allows it, by server_name; older nginx refuses
# the duplicate itself): the socket would be NoiseSocket, so the plain one is refused
# whichever comes first.
my $name = $t->has('virtual_servers') ? 'server_name plain.example;' : '';
for my $order (['noise first', 0], ['plain first', 1]) {
    my @servers = ('server { noise_listen 127.0.0.1:%%PORT_s%%; noise_private_key %%TESTDIR%%/server.key; return "x"; } ',
        "server { listen 127.0.0.1:%%PORT_s%%; $name return \"y\"; } ");
    @servers = reverse @servers if $order->[1];
    ($rc, $out) = conf_t(join '', @servers);
    isnt($rc, 0, "noise_listen and plain listen on one address ($order->[0]) fail");
    like($out, qr/"noise_listen 127\.0\.0\.1:\d+" in \S+nginx\.conf:\d+ (and a plain "listen" of the same address in the server at \S+nginx\.conf:\d+ cannot share a socket|shares its socket with a plain "listen")|duplicate "127\.0\.0\.1:\d+" address and port pair/,
        "one address, $order->[0]: the message names both");
}

($rc, $out) = conf_t('server { noise_listen 127.0.0.1:%%PORT_v%%; noise_private_key %%TESTDIR%%/server.key; return "x"; } '
    . 'server { listen %%PORT_v%%; return "y"; }');
isnt($rc, 0, 'noise address inside a plain wildcard socket fails');
like($out, qr/"noise_listen 127\.0\.0\.1:\d+" in \S+nginx\.conf:\d+ shares a wildcard socket with a plain "listen" of the same port; add the "bind" parameter to this "noise_listen"/,
    'wildcard socket: message names the noise_listen and the fix');

($rc, $out) = conf_t('server { noise_listen 127.0.0.1:%%PORT_v%% bind; noise_private_key %%TESTDIR%%/server.key; return "x"; } '
    . 'server { listen %%PORT_v%%; return "y"; }');
is($rc, 0, 'with "bind" the noise address gets its own socket') or diag($out);

($rc, $out) = conf_t('noise_private_key %%TESTDIR%%/server.key; noise_upstream_private_key %%TESTDIR%%/server.key; '
    . 'noise_padding 0; noise_upstream on; noise_upstream_padding 65517; noise_upstream_negotiation empty; '
    . 'noise_upstream_handshake_timeout 1m; noise_upstream_prologue "x y"; noise_upstream_trusted_keys %%TESTDIR%%/trusted; '
    . 'noise_upstream_psk %%TESTDIR%%/psk; noise_psk %%TESTDIR%%/psk; '
    . 'noise_upstream_server_key 127.0.0.1:%%PORT_a%% %%TESTDIR%%/server.pub; '
    . 'server { noise_listen 127.0.0.1:%%PORT_a%%; noise_protocol Noise_NN_25519_AESGCM_SHA256 Noise_XXpsk3_25519_ChaChaPoly_SHA512; return "x"; } '
    . 'server { listen 127.0.0.1:%%PORT_b%%; noise_upstream_protocol Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s; proxy_pass 127.0.0.1:%%PORT_a%%; }');
is($rc, 0, 'every directive at stream level, inherited by servers') or diag($out);

done_testing;
