#!/usr/bin/perl
# noise_status: the module's counters in the Prometheus text format, summed over 2 workers,
# exact after known traffic: ok and failed handshakes on both sides (untrusted, revoked,
# decrypt, timeout, closed, connect), by protocol, current connections by state, plaintext
# bytes; they survive a reload. Bad input: a status location in an nginx without a stream
# block (zeros), a POST (405), an argument (nginx -t error).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(server client gateway stranger revoked other);
$t->write_file('trusted.pub', "$pub{client}\n$pub{gateway}\n$pub{revoked}\n", 0644);
$t->write_file('revoked.pub', "$pub{revoked}\n", 0644);
$t->echo_backend('echo');
my $dir = $t->dir;
my $refused = $t->refused_port('refused');
$t->write_config((<<"END" =~ s/REFUSED/$refused/r) . NoiseTest::STATUS_HTTP);
stream {
    server {
        noise_listen 127.0.0.1:%%PORT_noise%%;
        noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s;
        noise_private_key %%TESTDIR%%/server.key;
        noise_trusted_keys %%TESTDIR%%/trusted.pub;
        noise_revoked_keys %%TESTDIR%%/revoked.pub;
        noise_handshake_timeout 1s;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        listen 127.0.0.1:%%PORT_gateway%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/gateway.key;
        proxy_pass 127.0.0.1:%%PORT_noise%%;
        proxy_half_close on;
    }
    server {
        listen 127.0.0.1:%%PORT_dead%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/gateway.key;
        proxy_pass 127.0.0.1:REFUSED;
    }
}
END
$t->run;
my ($noise, $http) = ($t->port('noise'), $t->port('http'));

sub status { $t->metrics }
sub value { $t->series($_[1], $_[0]) }
my @client = ('--key', "$dir/client.key", '--remote-key', "$dir/server.pub");

my $s = status();
like($s, qr{^HTTP/1\.1 200 OK\r\n}, 'status: 200');
like($s, qr{\r\nContent-Type: text/plain; version=0\.0\.4; charset=utf-8\r\n}, 'Prometheus 0.0.4 content type');
like($s, qr/^# TYPE nginx_noise_handshakes_total counter$/m, 'TYPE lines');
is(value($s, 'nginx_noise_handshakes_total{side="server",result="ok"}'), 0, 'zero before any traffic');

# Server side: 3 good clients, then one of each failure.
for (1 .. 3) {
    my $r = $t->noise_client($noise, "hello\n", @client);
    is($r->{out}, "hello\n", "good client $_") or diag($r->{err});
}
# (An XX client learns of its refusal only by the close after its last message.)
is($t->noise_client($noise, "x", '--key', "$dir/stranger.key", '--remote-key', "$dir/server.pub")->{out}, '',
    'untrusted client: nothing echoed');
is($t->noise_client($noise, "x", '--key', "$dir/revoked.key", '--remote-key', "$dir/server.pub")->{out}, '',
    'revoked client: nothing echoed');
isnt($t->noise_client($noise, "x", '--key', "$dir/client.key", '--remote-key', "$dir/other.pub",
    '--protocol', 'Noise_IK_25519_ChaChaPoly_BLAKE2s')->{rc}, 0, 'IK client with the wrong server key refused');
$t->raw_exchange($noise, "\x00\x06\x00", half_close => 1, timeout => 2);    # cut inside a message

# A stalled handshake is counted as one in progress, then as a timeout.
my $stall = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$noise") or die;
$t->wait_for(3, sub { value(status(), 'nginx_noise_connections{side="server",state="handshake"}') });
is(value(status(), 'nginx_noise_connections{side="server",state="handshake"}'), 1, 'a stalled handshake: in progress');
$t->wait_for(4, sub { value(status(), 'nginx_noise_handshakes_total{side="server",result="failed",reason="timeout"}') });
close $stall;

# Upstream side: two sessions through the gateway (each also a server-side handshake), one
# to a refused port.
for (1 .. 2) {
    my ($got) = $t->plain_exchange($t->port('gateway'), "0123456789");
    is($got, '0123456789', "gateway session $_");
}
$t->plain_exchange($t->port('dead'), "nothing", timeout => 3);

# An established connection held open, counted as such.
$t->spawn('sh', '-c', "sleep 3 | $t->{cli} connect 127.0.0.1:$noise -N @client");
$t->wait_for(3, sub { value(status(), 'nginx_noise_connections{side="server",state="established"}') });
$s = status();
is(value($s, 'nginx_noise_connections{side="server",state="established"}'), 1, 'an open connection: established');
$t->wait_for(6, sub { !value(status(), 'nginx_noise_connections{side="server",state="established"}') });

$s = status();
my %want = (
    'nginx_noise_handshakes_total{side="server",result="ok"}' => 6,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="untrusted_key"}' => 1,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="revoked_key"}' => 1,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="decrypt"}' => 1,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="closed"}' => 1,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="timeout"}' => 1,
    'nginx_noise_handshakes_total{side="server",result="failed",reason="negotiation"}' => 0,
    'nginx_noise_handshakes_total{side="upstream",result="ok"}' => 2,
    'nginx_noise_handshakes_total{side="upstream",result="failed",reason="connect"}' => 1,
    'nginx_noise_handshakes_total{side="upstream",result="failed",reason="timeout"}' => 0,
    'nginx_noise_handshakes_by_protocol_total{side="server",protocol="Noise_XX_25519_ChaChaPoly_BLAKE2s"}' => 6,
    'nginx_noise_handshakes_by_protocol_total{side="upstream",protocol="Noise_XX_25519_ChaChaPoly_BLAKE2s"}' => 2,
    'nginx_noise_connections{side="server",state="handshake"}' => 0,
    'nginx_noise_connections{side="server",state="established"}' => 0,
    'nginx_noise_connections{side="upstream",state="handshake"}' => 0,
    'nginx_noise_connections{side="upstream",state="established"}' => 0,
    # 3 × "hello\n" and 2 × 10 bytes in and echoed back out; the gateway's back-end side
    # sends the 20 and reads them back.
    'nginx_noise_bytes_total{side="server",direction="in"}' => 38,
    'nginx_noise_bytes_total{side="server",direction="out"}' => 38,
    'nginx_noise_bytes_total{side="upstream",direction="out"}' => 20,
    'nginx_noise_bytes_total{side="upstream",direction="in"}' => 20,
);
for my $series (sort keys %want) {
    is(value($s, $series), $want{$series}, "exact: $series");
}
ok(!defined value($s, 'nginx_noise_handshakes_by_protocol_total{side="server",protocol="Noise_IK_25519_ChaChaPoly_BLAKE2s"}'),
    'a protocol with no success has no series');
ok($t->worker_pids == 2, 'two workers served all this');

# Counters survive a reload.
$t->reload;
$s = status();
is(value($s, 'nginx_noise_handshakes_total{side="server",result="ok"}'), 6, 'after a reload: same counts');
my $r = $t->noise_client($noise, "again\n", @client);
is(value(status(), 'nginx_noise_handshakes_total{side="server",result="ok"}'), 7, 'after a reload: counting on');

# Bad input: POST; the status location where nginx has no stream block; an argument.
my ($got) = $t->plain_exchange($http, "POST /metrics HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", keep_open => 1, timeout => 3);
like($got, qr{^HTTP/1\.1 405 }, 'POST: 405');

my $h = NoiseTest->new;
$h->write_config(NoiseTest::STATUS_HTTP);
$h->run;
($got) = $h->plain_exchange($h->port('http'), "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n", keep_open => 1, timeout => 3);
like($got, qr/^nginx_noise_handshakes_total\{side="server",result="ok"\} 0$/m, 'no stream block: zeros, no crash');
$h->write_config(<<'END', 'arg.conf');
http {
    server {
        listen 127.0.0.1:%%PORT_http2%%;
        location /metrics { noise_status on; }
    }
}
END
my ($rc, $out) = $h->test_config('arg.conf');
isnt($rc, 0, 'noise_status with an argument: nginx -t fails');
like($out, qr/invalid number of arguments in "noise_status" directive in \S+arg\.conf:\d+/, 'with file and line');
unlike($t->error_log, qr/\[(alert|crit)\]/, 'no alert or crit');

done_testing;
