#!/usr/bin/perl
# noise_upstream: nginx speaks NoiseSocket to its back ends from stock proxy_pass.
# Chains client -> nginx (noise_upstream on) -> nginx (noise_listen) -> plain backend for
# XX, IK and NK with 10 MiB each way; nginx -> the CLI and -> the noiseprotocol peer as
# servers; balancing methods over three NoiseSocket back ends; proxy_next_upstream past a
# wrong key, a refused connect and a stalled handshake, with max_fails marking them down;
# back ends that speak first; proxy_connect_timeout bounds the handshake unless
# noise_upstream_handshake_timeout is set; 200 concurrent sessions; bad input from back
# ends; a variable proxy_pass to a bare address refused before connecting (502).

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my %pub = map { $_ => $t->keygen($_) } qw(b1 b2 b3 other gw);
$t->write_file('servers.pub', join("\n", @pub{qw(b1 b2 b3)}) . "\n", 0644);
$t->write_file('psk', "c3VwZXItc2VjcmV0LXNoYXJlZC1rZXktZm9yLXRlc3Q=\n");
$t->write_file('psk2', "b3RoZXItc2VjcmV0LXNoYXJlZC1rZXktZm9yLXRlc3Q=\n");
# KK back end: the client key is not sent, so the server tries its trusted keys in turn.
$t->write_file('gateways.pub', join("\n", @pub{qw(b2 gw b3)}) . "\n", 0644);
$t->echo_backend('echo');
my $dir = $t->dir;

# NoiseSocket servers outside nginx: the CLI and the independent Python peer.
my $cli_port = $t->port('cli');
$t->spawn($t->cli, 'listen', $cli_port, '--echo', '--count', 1000, '--key', "$dir/b1.key");
my $py_port = $t->port('py');
$t->spawn($t->{python}, $t->{peer}, 'listen', $py_port, '--echo', '--count', 1000, '--key', "$dir/b2.key",
    '--protocol', 'Noise_IK_25519_ChaChaPoly_BLAKE2s');
$t->wait_port($cli_port);
$t->wait_port($py_port);
# Bad back ends.
$t->scripted_backend('garbage', "HTTP/1.0 200 OK\r\n\r\nnot noise at all\n", 'close');
$t->scripted_backend('oversize', "\xff\xff" . ("\x00" x 70000), 'stall');
$t->scripted_backend($_, '', 'stall') for qw(stall stall2 stall3);
$t->scripted_backend('rec', '', 'read');
# An XX message 2 (accept, no negotiation data) whose e is the zero point.
$t->scripted_backend('loworder', "\x00\x00\x00\x60" . ("\x00" x 96), 'stall');
my $badmac = $t->port('badmac');
$t->spawn($t->{python}, $t->{peer}, 'listen', $badmac, '--echo', '--count', 100, '--key', "$dir/b1.key", '--corrupt-frame', 1);
my $trunc = $t->port('trunc');
$t->spawn($t->{python}, $t->{peer}, 'listen', $trunc, '--echo', '--count', 100, '--key', "$dir/b1.key", '--truncate');
my $noread = $t->port('noread');
$t->spawn($t->{python}, $t->{peer}, 'listen', $noread, '--echo', '--count', 100, '--key', "$dir/b1.key", '--no-read');
my $reset = $t->port('reset');
$t->spawn($t->{python}, $t->{peer}, 'listen', $reset, '--echo', '--count', 100, '--key', "$dir/b1.key", '--reset');
$t->wait_port($_) for $badmac, $trunc, $noread, $reset;
$t->refused_port('refuse');

my @gw = map { "    server { listen 127.0.0.1:%%PORT_g_$_->[0]%%; $_->[1] proxy_pass $_->[2]; }\n" } (
    ['xx', 'proxy_half_close on;', '127.0.0.1:%%PORT_b1%%'],
    ['ik', 'proxy_half_close on; noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;', '127.0.0.1:%%PORT_b1%%'],
    ['nk', 'proxy_half_close on; noise_upstream_protocol Noise_NK_25519_AESGCM_SHA256;', '127.0.0.1:%%PORT_b1%%'],
    ['kk', 'proxy_half_close on; noise_upstream_protocol Noise_KK_25519_ChaChaPoly_BLAKE2s;', '127.0.0.1:%%PORT_bkk%%'],
    ['psk', 'proxy_half_close on; noise_upstream_protocol Noise_XXpsk3_25519_AESGCM_SHA512; noise_upstream_negotiation empty; '
        . 'noise_upstream_psk %%TESTDIR%%/psk; noise_upstream_prologue "chain v1"; noise_upstream_padding 256;', '127.0.0.1:%%PORT_bpsk%%'],
    ['badpsk', 'noise_upstream_protocol Noise_XXpsk3_25519_AESGCM_SHA512; noise_upstream_negotiation empty; '
        . 'noise_upstream_psk %%TESTDIR%%/psk2; noise_upstream_prologue "chain v1";', '127.0.0.1:%%PORT_bpsk%%'],
    ['cli', 'proxy_half_close on;', '127.0.0.1:%%PORT_cli%%'],
    ['py', 'proxy_half_close on; noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;', '127.0.0.1:%%PORT_py%%'],
    ['rr', 'noise_upstream_trusted_keys %%TESTDIR%%/servers.pub;', 'rr'],
    ['weighted', '', 'weighted'],
    ['lc', '', 'lc'],
    ['hash', '', 'hashed'],
    ['random', '', 'rnd'],
    ['backup', 'noise_upstream_trusted_keys %%TESTDIR%%/servers.pub;', 'withbackup'],
    ['flaky', 'noise_upstream_trusted_keys %%TESTDIR%%/servers.pub; noise_upstream_handshake_timeout 1s;', 'flaky'],
    ['ct', 'proxy_connect_timeout 1s;', 'slow'],
    ['ctexplicit', 'proxy_connect_timeout 1s; noise_upstream_handshake_timeout 30s;', '127.0.0.1:%%PORT_stall3%%'],
    ['var', '', '$target'],
    ['garbage', '', '127.0.0.1:%%PORT_garbage%%'],
    ['reset', '', '127.0.0.1:%%PORT_reset%%'],
    ['oversize', 'noise_upstream_handshake_timeout 2s;', '127.0.0.1:%%PORT_oversize%%'],
    ['loworder', '', '127.0.0.1:%%PORT_loworder%%'],
    ['badmac', 'proxy_half_close on;', '127.0.0.1:%%PORT_badmac%%'],
    ['trunc', 'proxy_half_close on;', '127.0.0.1:%%PORT_trunc%%'],
    ['noread', 'proxy_timeout 2s;', '127.0.0.1:%%PORT_noread%%'],
    ['wrongkey', 'noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;', '127.0.0.1:%%PORT_wrong%%'],
);

$t->write_config(<<"END");
stream {
    log_format up '\$server_port \$upstream_addr \$noise_upstream_protocol \$noise_upstream_server_key \$status';
    access_log %%TESTDIR%%/logs/access.log up;

    # NoiseSocket back ends in the same nginx.
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s
                   Noise_NK_25519_AESGCM_SHA256;
    server { noise_listen 127.0.0.1:%%PORT_b1%%; noise_private_key %%TESTDIR%%/b1.key;
             noise_upstream off; proxy_pass 127.0.0.1:%%PORT_echo%%; proxy_half_close on; }
    server { noise_listen 127.0.0.1:%%PORT_bkk%%; noise_private_key %%TESTDIR%%/b1.key;
             noise_protocol Noise_KK_25519_ChaChaPoly_BLAKE2s; noise_trusted_keys %%TESTDIR%%/gateways.pub;
             noise_upstream off; proxy_pass 127.0.0.1:%%PORT_echo%%; proxy_half_close on; }
    server { noise_listen 127.0.0.1:%%PORT_bpsk%%; noise_private_key %%TESTDIR%%/b1.key;
             noise_protocol Noise_XXpsk3_25519_AESGCM_SHA512; noise_psk %%TESTDIR%%/psk;
             noise_prologue "chain v1"; noise_padding 256;
             noise_upstream off; proxy_pass 127.0.0.1:%%PORT_echo%%; proxy_half_close on; }
    server { noise_listen 127.0.0.1:%%PORT_r1%%; noise_private_key %%TESTDIR%%/b1.key; return "b1\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_r2%%; noise_private_key %%TESTDIR%%/b2.key; return "b2\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_r3%%; noise_private_key %%TESTDIR%%/b3.key; return "b3\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_wrong%%; noise_private_key %%TESTDIR%%/other.key; return "wrong\\n"; }

    # Zones: with several workers, balancer state (round robin turn, max_fails) is shared
    # only through a zone, as an operator would configure it.
    upstream rr { zone rr 64k; server 127.0.0.1:%%PORT_r1%%; server 127.0.0.1:%%PORT_r2%%; server 127.0.0.1:%%PORT_r3%%; }
    upstream weighted { zone weighted 64k; server 127.0.0.1:%%PORT_r1%% weight=2; server 127.0.0.1:%%PORT_r2%%; server 127.0.0.1:%%PORT_r3%%; }
    upstream lc { zone lc 64k; least_conn; server 127.0.0.1:%%PORT_r1%%; server 127.0.0.1:%%PORT_r2%%; server 127.0.0.1:%%PORT_r3%%; }
    upstream hashed { hash \$server_port; server 127.0.0.1:%%PORT_r1%%; server 127.0.0.1:%%PORT_r2%%; server 127.0.0.1:%%PORT_r3%%; }
    upstream rnd { random; server 127.0.0.1:%%PORT_r1%%; server 127.0.0.1:%%PORT_r2%%; server 127.0.0.1:%%PORT_r3%%; }
    upstream withbackup { zone withbackup 64k; server 127.0.0.1:%%PORT_wrong%% max_fails=1 fail_timeout=60s; server 127.0.0.1:%%PORT_r2%% backup; }
    upstream flaky {
        zone flaky 64k;
        server 127.0.0.1:%%PORT_wrong%% max_fails=1 fail_timeout=60s;
        server 127.0.0.1:%%PORT_refuse%% max_fails=1 fail_timeout=60s;
        server 127.0.0.1:%%PORT_stall%% max_fails=1 fail_timeout=60s;
        server 127.0.0.1:%%PORT_r1%%;
    }
    upstream slow { server 127.0.0.1:%%PORT_stall2%%; server 127.0.0.1:%%PORT_r1%%; }

    map \$remote_addr \$target { default 127.0.0.1:%%PORT_rec%%; }

    # Gateways: plaintext in, NoiseSocket out.
    noise_upstream on;
    noise_upstream_private_key %%TESTDIR%%/gw.key;
    noise_upstream_server_key 127.0.0.1:%%PORT_b1%% %%TESTDIR%%/b1.pub;
    noise_upstream_server_key 127.0.0.1:%%PORT_bkk%% %%TESTDIR%%/b1.pub;
    noise_upstream_server_key 127.0.0.1:%%PORT_py%% $pub{b2};
    noise_upstream_server_key 127.0.0.1:%%PORT_wrong%% %%TESTDIR%%/b1.pub;
@gw}
END
$t->run;
my $workers = $t->worker_set;
sub g { $t->port("g_$_[0]") }

# Chains with 10 MiB each way.
my $big = '';
$big .= md5_hex($_) x 64 for 1 .. 5120;
{
    # psk, application prologue, padding and empty negotiation data on both sides.
    my ($got) = $t->plain_exchange(g('psk'), 'p' x 100_000);
    is($got, 'p' x 100_000, 'psk + prologue + padding + empty negotiation chain');
    my $mark = $t->error_log_mark;
    ($got) = $t->plain_exchange(g('badpsk'), "x\n", timeout => 5);
    is($got, '', 'wrong psk: nothing gets through');
    # psk3 enters at message 3, the initiator's last: only the back end can tell, and does.
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /\[info\].*noise: handshake failed: decryption failed/ }),
        'wrong psk: the back end refuses message 3');
}
for my $chain (qw(xx ik nk kk)) {
    my ($got) = $t->plain_exchange(g($chain), $big);
    is(length $got, length $big, "$chain chain: 10 MiB back");
    is(md5_hex($got), md5_hex($big), "$chain chain: checksum matches");
}
for my $server (qw(cli py)) {
    my ($got) = $t->plain_exchange(g($server), $big);
    ok($got eq $big, "nginx -> $server as NoiseSocket server: 10 MiB echoed");
}
sleep 0.3;
my $log = $t->read_file('logs/access.log');
my $g_ik = g('ik');
like($log, qr/^$g_ik \S+ Noise_IK_25519_ChaChaPoly_BLAKE2s \Q$pub{b1}\E 200$/m, 'variables: upstream protocol and server key');

# A back end that speaks first (`return`): the client sends nothing.
my ($got) = $t->plain_exchange(g('rr'), '', keep_open => 1, timeout => 5);
like($got, qr/^b[123]\n\z/, 'back end speaks first');

# Balancing.
sub tally {
    my ($gw, $n) = @_;
    my %c;
    for (1 .. $n) { my ($r) = $t->plain_exchange(g($gw), '', keep_open => 1, timeout => 5); $c{$r =~ s/\n//r}++ }
    return \%c;
}
my $c = tally('rr', 30);
is_deeply($c, {b1 => 10, b2 => 10, b3 => 10}, 'round-robin: 10 each') or diag(explain $c);
$c = tally('weighted', 40);
is_deeply($c, {b1 => 20, b2 => 10, b3 => 10}, 'weights: 2:1:1') or diag(explain $c);
$c = tally('lc', 30);
is_deeply($c, {b1 => 10, b2 => 10, b3 => 10}, 'least_conn (sequential): even') or diag(explain $c);
$c = tally('hash', 12);
is(scalar keys %$c, 1, 'hash: one key, one back end') or diag(explain $c);
$c = tally('random', 60);
ok((grep { ($c->{$_} // 0) >= 5 } qw(b1 b2 b3)) == 3, 'random: every back end used') or diag(explain $c);
$c = tally('backup', 4);
is_deeply($c, {b2 => 4}, 'backup takes over from a back end with the wrong key') or diag(explain $c);

# proxy_next_upstream past a wrong key, a refused connect and a stalled handshake.
my $mark = $t->error_log_mark;
($got) = $t->plain_exchange(g('flaky'), '', keep_open => 1, timeout => 10);
is($got, "b1\n", 'next upstream: reaches the good back end');
my $since = $t->error_log_since($mark);
my $wrong = $t->port('wrong');
like($since, qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:$wrong failed: server key mismatch: got \Q$pub{other}\E/, 'wrong key: logged at error with the upstream address');
like($since, qr/connect\(\) failed \(111: Connection refused\)/, 'refused connect: logged, as nginx words it');
my $stall = $t->port('stall');
like($since, qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:$stall failed: timed out/, 'stalled handshake: timed out');
my @timeouts = $since =~ /upstream timed out/g;
is(scalar @timeouts, 0, 'no "upstream timed out" line claims a connect timeout that did not happen');
$mark = $t->error_log_mark;
($got) = $t->plain_exchange(g('flaky'), '', keep_open => 1, timeout => 5);
is($got, "b1\n", 'second request: straight to the good back end');
unlike($t->error_log_since($mark), qr/noise: upstream|Connection refused/, 'max_fails: failed back ends are down, no retries');

# 200 concurrent sessions through the chain.
my @pids;
for my $i (1 .. 200) {
    my $pid = fork // die;
    if (!$pid) {
        my $msg = "session $i " . ('y' x 2000) . "\n";
        my ($r) = $t->plain_exchange(g('xx'), $msg, timeout => 20);
        require POSIX;
        POSIX::_exit($r eq $msg ? 0 : 1);
    }
    push @pids, $pid;
}
my $failed = 0;
for (@pids) { waitpid($_, 0); $failed++ if $? }
is($failed, 0, '200 concurrent sessions through the chain');

# Fail closed: proxy_pass to a variable resolving to a bare address bypasses the group, so
# it is refused before any connection is made.
$mark = $t->error_log_mark;
($got) = $t->plain_exchange(g('var'), "secret plaintext\n", timeout => 3);
is($got, '', 'fail closed: nothing comes back');
like($t->error_log_since($mark), qr/\[error\].*noise: "proxy_pass" target "[^"]+" is not an upstream group: "noise_upstream on" connects only to upstream groups, refusing to connect/, 'fail closed: refused before connecting, logged');
is($t->read_file('rec.received'), '', 'fail closed: no plaintext reached the back end');
ok($t->wait_for(3, sub { $t->read_file('logs/access.log') =~ /^${\g('var')} - +\S* +\S* 502$/m }), 'fail closed: logged with status 502');

# proxy_connect_timeout bounds the handshake (as with proxy_ssl), unless
# noise_upstream_handshake_timeout is set: a back end that accepts and stalls is a failed
# attempt after 1s, not after the 60s default, and the next server is tried.
$mark = $t->error_log_mark;
($got) = $t->plain_exchange(g('ct'), '', keep_open => 1, timeout => 8);
is($got, "b1\n", 'proxy_connect_timeout 1s: past the stalled back end to the next server');
my $stall2 = $t->port('stall2');
like($t->error_log_since($mark), qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:$stall2 failed: timed out/,
    'proxy_connect_timeout 1s: the stalled handshake timed out');
# An explicit noise_upstream_handshake_timeout (30s) wins over proxy_connect_timeout 1s.
$mark = $t->error_log_mark;
($got) = $t->plain_exchange(g('ctexplicit'), '', keep_open => 1, timeout => 3);
is($got, '', 'explicit handshake timeout: still waiting after 3s');
my $stall3 = $t->port('stall3');
unlike($t->error_log_since($mark), qr/upstream 127\.0\.0\.1:$stall3 failed/,
    'explicit handshake timeout: not cut at proxy_connect_timeout');

# Bad input from back ends: clean close, a log line, the worker lives on.
my $baseline = $t->fd_total;
for my $case (
    ['garbage', qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: /],
    ['oversize', qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: /],
    ['wrongkey', qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: connection closed during the handshake/],
    ['loworder', qr/\[error\].*noise: NoiseSocket handshake with upstream 127\.0\.0\.1:\d+ failed: peer sent a low-order public key/],
    ['badmac', qr/\[info\].*noise: reading from peer: decryption failed \(bad MAC in transport message\)/],
    ['trunc', qr/\[info\].*noise: peer closed the connection: connection closed inside a frame/],
) {
    my ($name, $re) = @$case;
    $mark = $t->error_log_mark;
    my ($r, $closed) = $t->plain_exchange(g($name), "data for $name\n" x 10, timeout => 6);
    ok($closed, "$name: session closed");
    unlike($r, qr/not noise|\x00\x00\x00/, "$name: no back-end plaintext reaches the client")
        unless $name eq 'badmac' || $name eq 'trunc';
    my $since = $t->error_log_since($mark);
    like($since, $re, "$name: logged, saying what happened") or diag($since);
    unlike($since, qr/upstream timed out/, "$name: no false timeout line");
    is($t->worker_set, $workers, "$name: workers survive");
}
# A back end's reset is an error, as nginx logs it on a plain upstream (ngx_connection_error).
{
    my $mark = $t->error_log_mark;
    my ($r, $closed) = $t->plain_exchange(g('reset'), "data for reset\n", keep_open => 1, timeout => 6);
    ok($closed, 'reset: session closed');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~
        /\[error\].*noise: recv\(\) failed \(104: Connection reset by peer\) while proxying and reading from upstream/ }),
        "a back end's reset after the handshake: one error line, as on a plain upstream") or diag($t->error_log_since($mark));
}
# A client's reset is the client's business: info, as nginx logs it on a plain connection.
{
    my $mark = $t->error_log_mark;
    my $r = $t->python_client($t->port('b1'), '', '--key', "$dir/other.key", '--reset');
    ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /\[info\].*noise: recv\(\) failed \(104: Connection reset by peer\)/ }),
        "a client's reset after the handshake: one info line");
    unlike($t->error_log_since($mark), qr/\[(error|alert|crit)\]/, "a client's reset: nothing above info");
}
# A back end that speaks plaintext and closes at once may already be in CLOSE_WAIT when the
# connect is checked: that must be a failed handshake, never a relayed plaintext (it was, on
# a few percent of connections). 40 tries, none may leak.
{
    my $leaked = 0;
    for (1 .. 40) {
        my ($r) = $t->plain_exchange(g('garbage'), '', keep_open => 1, timeout => 3);
        $leaked++ if $r =~ /not noise/;
    }
    is($leaked, 0, 'speak-and-close back end: no plaintext relayed in 40 tries');
}

# A back end that stops reading: bounded memory.
my $rss0 = $t->rss_total;
my $pid = fork // die;
if (!$pid) { $t->plain_exchange(g('noread'), 'z' x (64 << 20), timeout => 4); require POSIX; POSIX::_exit(0) }
sleep 3;
my $rss1 = $t->rss_total;
ok($rss1 - $rss0 < 8 * 1024, 'back end that stops reading: RSS grew by ' . ($rss1 - $rss0) . ' KiB');
waitpid($pid, 0);
# nginx, as for plain TCP, holds the session until proxy_timeout (2s here) expires.
ok($t->wait_for(6, sub { $t->fd_total <= $baseline }), 'fds back to the baseline after proxy_timeout');
unlike($t->error_log, qr/\[(crit|alert|emerg)\]/, 'nothing critical');
done_testing;
