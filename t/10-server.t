#!/usr/bin/perl
# noise_listen end to end: every default protocol via the CLI and via the independent
# noiseprotocol peer; 10 MiB each way through proxy_pass with a checksum compare;
# 200 concurrent clients; `return`; `pass` to an http server (HTTP over NoiseSocket, no
# second hop); the $noise_* variables in access_log; a mixed plain listen.

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $server_pub = $t->keygen('server');
my $client_pub = $t->keygen('client');
$t->echo_backend('echo');

# `pass` exists from nginx 1.25.5: on older nginx its server is left out and its tests are
# skipped with the reason.
my $pass_server = $t->has('pass') ? <<'END' : '';
    server {
        noise_listen 127.0.0.1:%%PORT_pass%%;
        pass 127.0.0.1:%%PORT_http%%;
    }
END
$t->write_config(<<'END' =~ s/PASS_SERVER\n/$pass_server/r);
stream {
    log_format noise '$remote_addr|$noise_protocol|$noise_client_key|$noise_handshake_hash|$noise_negotiation|$status';
    access_log %%TESTDIR%%/logs/access.log noise;
    noise_private_key %%TESTDIR%%/server.key;

    server {
        noise_listen 127.0.0.1:%%PORT_proxy%%;
        listen 127.0.0.1:%%PORT_plain%%;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_return%%;
        return "hello over noise\n";
    }
PASS_SERVER
}
http {
    access_log off;
    server {
        listen 127.0.0.1:%%PORT_http%%;
        location / { return 200 "hello http, $request_uri\n"; }
        location /files/ { root %%TESTDIR%%; sendfile on; }
    }
}
END
$t->run;

my @key = ('--key', $t->dir . '/client.key', '--remote-key', $t->dir . '/server.pub');
my ($proxy, $ret, $pass) = map { $t->port($_) } qw(proxy return pass);

my $r = $t->noise_client($ret, '', @key);
is($r->{rc}, 0, 'return: client ok') or diag($r->{err});
is($r->{out}, "hello over noise\n", 'return: plaintext reaches the client');

# Every default protocol, with both clients.
my @defaults;
for my $p (qw(XX IK)) { for my $c (qw(ChaChaPoly AESGCM)) { for my $h (qw(BLAKE2s BLAKE2b SHA256 SHA512)) {
    push @defaults, "Noise_${p}_25519_${c}_${h}";
} } }
is(scalar @defaults, 16, '16 default protocols');
my $data = join '', map { chr(($_ * 7) % 256) } 0 .. 99_999;
for my $proto (@defaults) {
    my $r = $t->noise_client($proxy, $data, '--protocol', $proto, @key, '-v');
    ok($r->{rc} == 0 && $r->{out} eq $data, "cli $proto") or diag($r->{err});
    like($r->{err}, qr/^protocol=\Q$proto\E$/m, "cli $proto: negotiated");
    my $p = $t->python_client($proxy, $data, '--protocol', $proto, @key, '-v');
    ok($p->{rc} == 0 && $p->{out} eq $data, "noiseprotocol $proto") or diag($p->{err});
}

# 10 MiB each way, checksums compared.
my $big = '';
$big .= md5_hex($_) x 64 for 1 .. 5120;    # 5120 * 2048 bytes = 10 MiB
is(length $big, 10 * 1024 * 1024, '10 MiB of data');
$r = $t->noise_client($proxy, $big, @key);
is($r->{rc}, 0, '10 MiB: client ok') or diag($r->{err});
is(length $r->{out}, length $big, '10 MiB: all bytes back');
is(md5_hex($r->{out}), md5_hex($big), '10 MiB: checksum matches');

# 200 concurrent clients.
my @pids;
for my $i (1 .. 200) {
    my $pid = fork // die;
    if (!$pid) {
        my $msg = "client $i " . ('x' x 1000) . "\n";
        my $r = $t->run_cmd([$t->cli, 'connect', "127.0.0.1:$proxy", '-N', @key], $msg, 30);
        exit($r->{rc} == 0 && $r->{out} eq $msg ? 0 : 1);
    }
    push @pids, $pid;
}
my $failed = 0;
for (@pids) { waitpid($_, 0); $failed++ if $? }
is($failed, 0, '200 concurrent clients all round-trip');

# pass to http in the same nginx: HTTP over NoiseSocket.
SKIP: {
skip $t->lacks_reason('pass'), 5 unless $t->has('pass');
$r = $t->python_client($pass, "GET /over/noise HTTP/1.0\r\nHost: x\r\n\r\n", @key, '--keep-open');
is($r->{rc}, 0, 'pass: client ok') or diag($r->{err});
like($r->{out}, qr{^HTTP/1\.1 200 OK\r\n.*\r\n\r\nhello http, /over/noise\n\z}s, 'pass: http response');

# A static file with sendfile on: file buffers reach our send_chain and are read into frames.
chmod 0755, $t->dir;    # workers run as nobody
mkdir $t->dir . '/files';
my $file = join '', map { md5_hex("f$_") } 1 .. 100_000;    # 3.2 MB
$t->write_file('files/big.txt', $file, 0644);
# nginx's http takes a client FIN during a response as an abort, so the client keeps its
# side open until the response ends.
$r = $t->python_client($pass, "GET /files/big.txt HTTP/1.0\r\nHost: x\r\n\r\n", @key, '--keep-open');
my ($head, $body) = split /\r\n\r\n/, $r->{out}, 2;
like($head // '', qr{^HTTP/1\.1 200 OK}, 'pass + sendfile: 200');
is(length($body // ''), length $file, 'pass + sendfile: whole file');
is(md5_hex($body // ''), md5_hex($file), 'pass + sendfile: file intact');
}

# The plain listen of the same server still works.
my ($got) = $t->raw_exchange($t->port('plain'), "plain\n", half_close => 1);
is($got, "plain\n", 'plain listen in the same server');

# Variables in access_log.
$r = $t->noise_client($ret, '', '--protocol', 'Noise_IK_25519_AESGCM_SHA512', @key, '-v');
my ($hash) = $r->{err} =~ /^handshake_hash=(\w+)$/m;
sleep 0.3;
my $log = $t->read_file('logs/access.log');
like($log, qr/^127\.0\.0\.1\|Noise_IK_25519_AESGCM_SHA512\|\Q$client_pub\E\|$hash\|00010102040e\|200$/m,
    'access_log: protocol, client key, handshake hash, negotiation data');
like($log, qr/^127\.0\.0\.1\|-\|-\|-\|-\|200$/m, 'access_log: plain connections have empty noise variables');

unlike($t->error_log, qr/\[(error|crit|alert|emerg)\]/, 'no errors logged');
done_testing;
