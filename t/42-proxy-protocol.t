#!/usr/bin/perl
# PROXY protocol across a NoiseSocket hop: client -> A (noise_upstream on + proxy_protocol
# on) -> B (noise_listen ... proxy_protocol). A sends the header in clear before its
# handshake, as proxy_ssl does before TLS, and never again inside the stream; B's access
# log, $proxy_protocol_addr, realip's $remote_addr and allow/deny see the original client
# (who connects from 127.0.0.2 or .3, A being 127.0.0.1). Bad inputs: a client speaking
# PROXY garbage to B, a header followed by garbage, A without proxy_protocol in front of a B
# that expects it, A with it in front of a B without it: each a clean close, logged once.
# Where nginx has `proxy_protocol v2` (1.31.4), A sends the binary v2 header the proxy would
# send, once, in clear: B reads it, and a recording back end sees its bytes.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(a b);
$t->scripted_backend('rec', '', 'read');
my $v2 = $t->has('proxy_protocol_v2');
$t->scripted_backend('rec2', '', 'read') if $v2;
my $v2_servers = $v2 ? <<'END' : '';
    server { listen 127.0.0.1:%%PORT_av2%%; noise_upstream on; proxy_protocol v2; proxy_pass 127.0.0.1:%%PORT_b%%; }
    server { listen 127.0.0.1:%%PORT_av2rec%%; noise_upstream on; proxy_protocol v2;
             proxy_connect_timeout 2s; proxy_pass 127.0.0.1:%%PORT_rec2%%; }
END

my $conf = <<'END';
stream {
    log_format pp '$server_port $remote_addr $proxy_protocol_addr $realip_remote_addr $status';
    access_log %%TESTDIR%%/logs/access.log pp;

    # B: NoiseSocket servers that read a PROXY header first, trust it from A (realip) and
    # let only the client at 127.0.0.2 in.
    server {
        noise_listen 127.0.0.1:%%PORT_b%% proxy_protocol;
        noise_private_key %%TESTDIR%%/b.key;
        set_real_ip_from 127.0.0.1;
        allow 127.0.0.2;
        deny all;
        return "remote=$remote_addr pp=$proxy_protocol_addr realip=$realip_remote_addr key=$noise_client_key\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_brelay%% proxy_protocol;
        noise_private_key %%TESTDIR%%/b.key;
        proxy_pass 127.0.0.1:%%PORT_rec%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_bnopp%%;
        noise_private_key %%TESTDIR%%/b.key;
        return "no proxy protocol here\n";
    }

    # A: plaintext in, PROXY header + NoiseSocket out.
    noise_upstream_private_key %%TESTDIR%%/a.key;
    server { listen 127.0.0.1:%%PORT_a%%; noise_upstream on; proxy_protocol on; proxy_pass 127.0.0.1:%%PORT_b%%; }
    server { listen 127.0.0.1:%%PORT_aik%%; noise_upstream on; proxy_protocol on;
             noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;
             noise_upstream_server_key 127.0.0.1:%%PORT_b%% %%TESTDIR%%/b.pub;
             proxy_pass 127.0.0.1:%%PORT_b%%; }
    server { listen 127.0.0.1:%%PORT_arelay%%; noise_upstream on; proxy_protocol on; proxy_pass 127.0.0.1:%%PORT_brelay%%; }
    server { listen 127.0.0.1:%%PORT_anopp%%; noise_upstream on; proxy_pass 127.0.0.1:%%PORT_b%%; }
    server { listen 127.0.0.1:%%PORT_atonopp%%; noise_upstream on; proxy_protocol on; proxy_pass 127.0.0.1:%%PORT_bnopp%%; }
#V2#
}
END
$conf =~ s/#V2#\n/$v2_servers/;
$t->write_config($conf);
$t->run;
my $workers = $t->worker_set;
my %port = map { $_ => $t->port($_) } qw(a aik arelay anopp atonopp b brelay bnopp);

# The chain carries the client's address into B.
for my $front (qw(a aik)) {
    my ($got) = $t->plain_exchange($port{$front}, '', keep_open => 1, timeout => 5, local => '127.0.0.2');
    is($got, "remote=127.0.0.2 pp=127.0.0.2 realip=127.0.0.1 key=$pub{a}\n",
        "$front: B sees the client's address (PROXY header, realip) behind A's NoiseSocket key");
}
sleep 0.3;
like($t->read_file('logs/access.log'), qr/^$port{b} 127\.0\.0\.2 127\.0\.0\.2 127\.0\.0\.1 200$/m,
    "B's access log has the original client");

# allow/deny on B see the original client: 127.0.0.3 is refused (before B's handshake, so A
# fails the attempt).
my $mark = $t->error_log_mark;
my ($got) = $t->plain_exchange($port{a}, '', keep_open => 1, timeout => 5, local => '127.0.0.3');
is($got, '', 'deny on B: a client B does not allow gets nothing');
ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /access forbidden by rule.*client: 127\.0\.0\.3,/ }),
    'deny on B: refused by rule, for the original client');
sleep 0.3;
like($t->read_file('logs/access.log'), qr/^$port{b} 127\.0\.0\.3 127\.0\.0\.3 127\.0\.0\.1 403$/m,
    "deny on B: logged with the original client and 403");

# The header is sent once, in clear: the relay's back end gets exactly the client's bytes.
($got) = $t->plain_exchange($port{arelay}, "hello through two hops\n", timeout => 5, local => '127.0.0.2');
ok($t->wait_for(5, sub { ($t->read_file('rec.received') // '') eq "hello through two hops\n" }),
    'no second PROXY header inside the NoiseSocket stream');

# Bad inputs, each a clean close and one line saying what happened.
sub lines_like {
    my ($since, $re) = @_;
    return scalar(() = $since =~ /$re/g);
}
{
    $mark = $t->error_log_mark;
    my ($r, $closed) = $t->raw_exchange($port{b}, "PROXY GARBAGE\r\n", timeout => 5);
    ok($closed && $r eq '', 'PROXY garbage to B: closed, nothing sent back');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /broken header/ }), 'PROXY garbage to B: logged');
    is(lines_like($t->error_log_since($mark), qr/\[(?:error|info)\] (?!.*(?:client \S+ connected to|closing)).*\n/), 1,
        'PROXY garbage to B: one line');
}
{
    $mark = $t->error_log_mark;
    my ($r, $closed) = $t->raw_exchange($port{b}, "PROXY TCP4 127.0.0.2 127.0.0.1 5555 7443\r\n" . ("\xee" x 64), timeout => 5);
    ok($closed && $r eq '', 'PROXY header then garbage: closed, nothing sent back');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /\[info\].*noise: handshake failed: .*client: 127\.0\.0\.2,/ }),
        'PROXY header then garbage: the handshake failure is logged for the address in the header');
}
{
    $mark = $t->error_log_mark;
    my ($r, $closed) = $t->plain_exchange($port{anopp}, "x\n", keep_open => 1, timeout => 5, local => '127.0.0.2');
    is($r, '', 'A without proxy_protocol in front of B with it: nothing gets through');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /noise: NoiseSocket handshake with upstream 127\.0\.0\.1:$port{b} failed/ }),
        'A without proxy_protocol: A logs the failed attempt');
    my $since = $t->error_log_since($mark);
    is(lines_like($since, qr/noise: NoiseSocket handshake with upstream/), 1, 'A without proxy_protocol: one line on A');
    is(lines_like($since, qr/broken header/), 1, 'A without proxy_protocol: one line on B (broken header)');
}
{
    $mark = $t->error_log_mark;
    my ($r) = $t->plain_exchange($port{atonopp}, "x\n", keep_open => 1, timeout => 5, local => '127.0.0.2');
    is($r, '', 'A with proxy_protocol in front of B without it: nothing gets through');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /noise: NoiseSocket handshake with upstream 127\.0\.0\.1:$port{bnopp} failed/ }),
        'A with proxy_protocol, B without: A logs the failed attempt');
    my $since = $t->error_log_since($mark);
    is(lines_like($since, qr/noise: NoiseSocket handshake with upstream/), 1, 'B without proxy_protocol: one line on A');
    is(lines_like($since, qr/\[info\].*noise: handshake failed/), 1, 'B without proxy_protocol: one line on B');
}
# proxy_protocol v2: the proxy's binary header, sent by A in clear before the handshake.
SKIP: {
    skip $t->lacks_reason('proxy_protocol_v2'), 5 unless $v2;
    my ($got) = $t->plain_exchange($t->port('av2'), '', keep_open => 1, timeout => 5, local => '127.0.0.2');
    is($got, "remote=127.0.0.2 pp=127.0.0.2 realip=127.0.0.1 key=$pub{a}\n",
        'proxy_protocol v2: B sees the client\'s address behind A\'s NoiseSocket key');
    # A back end that records what it gets and never answers the handshake.
    $t->plain_exchange($t->port('av2rec'), '', keep_open => 1, timeout => 1, local => '127.0.0.2');
    my $rec = '';
    $t->wait_for(5, sub { length($rec = $t->read_file('rec2.received')) >= 16 + 12 + 32 });
    my $sig = "\r\n\r\n\0\r\nQUIT\n";
    is(substr($rec, 0, 12), $sig, 'proxy_protocol v2: the back end gets the v2 signature first');
    is(unpack('H4', substr($rec, 12, 2)), '2111', 'proxy_protocol v2: version 2 PROXY, TCP over IPv4');
    my $len = unpack('n', substr($rec, 14, 2));
    is(join('.', unpack('C4', substr($rec, 16, 4))), '127.0.0.2', "proxy_protocol v2: the client's address");
    my $rest = length($rec) > 16 + $len ? substr($rec, 16 + $len) : "";
    ok(length($rest) > 0 && index($rest, $sig) < 0 && index($rec, 'PROXY ') < 0,
        'proxy_protocol v2: one header (no v1 line, no second header), then the handshake');
}

is($t->worker_set, $workers, 'workers survive');
unlike($t->error_log, qr/\[(crit|alert|emerg)\]/, 'nothing critical');
done_testing;
