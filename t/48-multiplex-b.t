#!/usr/bin/perl
# B's side of multiplexed links (docs/multiplex.md §12), driven by an independent A written
# from the document (tests/interop/mux_client.py): streams to `return` and to `proxy_pass`
# an echo back end, many streams on one link (hash-checked), a slow reader that does not
# stall the others, half-closes both ways, resets, the stream limit, ordinary clients on the
# same address, a server without noise_multiplex refusing the field, bad frames (one info
# line, the link closed, no crash, no fd leak), rapid reset and a reload with a link open (go-away, the
# stream in flight finishes).

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen($_) for qw(server client);
$t->echo_backend('echo');
$t->refused_port('down');
my $dir = $t->dir;
$t->write_config(<<'END');
stream {
    log_format mux '$server_port|$remote_addr|$noise_client_key|$noise_origin_addr|$status';
    access_log %%TESTDIR%%/logs/mux.log mux;
    server {
        noise_listen 127.0.0.1:%%PORT_ret%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_multiplex on;
        return "key=$noise_client_key origin=$noise_origin_addr remote=$remote_addr\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_trust%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_multiplex on;
        noise_multiplex_trust_origin on;
        return "remote=$remote_addr origin=$noise_origin_addr\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_echo_mux%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_multiplex on;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_dead%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_multiplex on;
        proxy_pass 127.0.0.1:%%PORT_down%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_preread%%;
        noise_private_key %%TESTDIR%%/server.key;
        noise_multiplex on;
        ssl_preread on;
        preread_timeout 5s;
        return "preread done\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_plain%%;
        noise_private_key %%TESTDIR%%/server.key;
        return "no multiplexing here\n";
    }
}
END
$t->run;

my @keys = ('--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
my $client = "$ENV{PWD}/tests/interop/mux_client.py";
sub mux {
    my ($port, $scenario, @opts) = @_;
    return $t->run_cmd([$t->{python}, $client, "127.0.0.1:" . $t->port($port), $scenario, @keys, @opts],
        '', 90);
}
my $client_key = $t->read_file("client.pub");
($client_key) = $client_key =~ /([A-Za-z0-9+\/=]{43,44})/;

# (B's `return` may end before A's FIN is read: then a reset (cancel) follows its FIN.)
my $r = mux('ret', 'return');
like($r->{out}, qr/^stream 1 fin=True reset=(?:None|0) data=key=\Q$client_key\E origin=192\.0\.2\.7 remote=127\.0\.0\.1$/m,
    'a stream to return: the answer, $noise_client_key is the link peer\'s, $remote_addr the link\'s')
    or diag($r->{out}, $r->{err});

# noise_multiplex_trust_origin on: $remote_addr is the origin A named.
$r = mux('trust', 'return');
like($r->{out}, qr/data=remote=192\.0\.2\.7 origin=192\.0\.2\.7$/m, 'trust_origin: $remote_addr is the origin address')
    or diag($r->{out}, $r->{err});

my $fds = $t->fd_total;

# Many streams on one link through proxy_pass to an echo back end, each more than its
# initial window both ways, hash-checked.
$r = mux('echo_mux', 'echo', '--streams', 40, '--size', 150_000);
my @ok = $r->{out} =~ /^stream \d+ ok /mg;
is(scalar @ok, 40, '40 streams on one link: every echo intact (sha256)') or diag($r->{out}, $r->{err});
unlike($r->{out}, qr/BAD/, 'no stream corrupted');

# A slow reader: stream 1 grants no more credit after its first window; 9 others finish
# beside it; then it reads again and finishes too.
$r = mux('echo_mux', 'slow', '--streams', 10, '--size', 600_000);
like($r->{out}, qr/^stalled stream 1 has (\d+) of 600000 bytes while 9 others finished$/m,
    'a stream that stops reading does not stall the others') or diag($r->{out}, $r->{err});
my ($stalled) = $r->{out} =~ /^stalled stream 1 has (\d+)/m;
ok(defined $stalled && $stalled <= 65536, "B sent the stalled stream no more than its window ($stalled bytes)");
@ok = $r->{out} =~ /^stream \d+ ok /mg;
is(scalar @ok, 10, 'and all 10, the slow one included, finish intact');

# B cannot reach its upstream: the stream is reset with "connect failed" (A counts a failed
# attempt), not half-closed as if the answer were complete; the link goes on.
$r = mux('dead', 'return');
like($r->{out}, qr/^stream 1 fin=False reset=2 data=$/m, 'upstream down: RESET connect failed')
    or diag($r->{out}, $r->{err});

# Half-closes both ways.
$r = mux('ret', 'halfclose');
like($r->{out}, qr/^stream 1: B's FIN first, data=key=/m, "B's FIN while ours is open") or diag($r->{out}, $r->{err});
like($r->{out}, qr/^stream 3: our FIN first, data=key=/m, 'our FIN first, B still answers');

# A reset stream ends; the link goes on.
$r = mux('echo_mux', 'reset');
like($r->{out}, qr/^after reset: after reset$/m, 'after a reset the link carries new streams') or diag($r->{out}, $r->{err});

# A reset while the stream's session waits in the preread phase (ssl_preread holds a TLS
# record header that promises more): the session ends, the worker is fine, the link goes on.
my $workers = $t->worker_set;
$r = mux('preread', 'preread-reset');
like($r->{out}, qr/^after a reset in preread: fin=True reset=/m, 'a reset during preread: the link goes on')
    or diag($r->{out}, $r->{err});
is($t->worker_set, $workers, 'and no worker was lost');

# Opens beyond max_streams (128) are refused, the link goes on.
$r = mux('echo_mux', 'limit');
like($r->{out}, qr/^refused 257 259$/m, 'streams beyond the limit are refused') or diag($r->{out}, $r->{err});
like($r->{out}, qr/^closed 128$/m, 'the 128 others are served');

# Ordinary NoiseSocket clients on the same address.
$r = $t->python_client($t->port('ret'), '', @keys);
like($r->{out}, qr/^key=\Q$client_key\E origin= remote=127\.0\.0\.1$/m, 'an ordinary client on a noise_multiplex address is served')
    or diag($r->{err});

# A server without noise_multiplex refuses the field cleanly (A falls back).
my $mark = $t->error_log_mark;
$r = mux('plain', 'return');
like($r->{out}, qr/^handshake failed: rejected by peer/m, 'without noise_multiplex: the offer is rejected') or diag($r->{out}, $r->{err});
$r = $t->python_client($t->port('plain'), '', @keys);
like($r->{out}, qr/^no multiplexing here$/m, 'and the same client without the offer is served');

# Bad frames: one info line, the link closed, a go-away with reason protocol.
for my $case (['garbage-type', qr/unknown multiplex frame type 0x09/],
              ['garbage-stream', qr/DATA frame on stream 9, which was never opened/i],
              ['garbage-window', qr/window update of 2147483647 overflows/]) {
    my ($scenario, $line) = @$case;
    $mark = $t->error_log_mark;
    $r = mux('echo_mux', $scenario);
    like($r->{out}, qr/^link closed goaway=\(\d+, 1\) stream_reset=None$/m, "$scenario: link closed with a go-away (protocol)")
        or diag($r->{out}, $r->{err});
    $t->wait_for(5, sub { $t->error_log_since($mark) =~ $line });
    my @lines = grep { /noise: multiplexed link/ } split /\n/, $t->error_log_since($mark);
    is(scalar @lines, 1, "$scenario: one log line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/\[info\].*$line/, "$scenario: at info, saying what was wrong");
}

# Rapid reset: open-and-reset pairs exhaust the cheap-frame budget; the link is cut with a
# go-away (flood) and one info line, and the streams it opened end with it.
$mark = $t->error_log_mark;
$r = mux('echo_mux', 'flood');
like($r->{out}, qr/^link closed goaway=\(\d+, 3\)$/m, 'rapid reset: the link closed with a go-away (flood)')
    or diag($r->{out}, $r->{err});
$t->wait_for(5, sub { $t->error_log_since($mark) =~ /noise: multiplexed link: .*flood/i });
my @flood = grep { /noise: multiplexed link/ } split /\n/, $t->error_log_since($mark);
is(scalar @flood, 1, 'rapid reset: one log line') or diag(join "\n", @flood);
like($flood[0] // '', qr/\[info\]/, 'rapid reset: at info');

# Garbage as A's very first frame, likely read together with its last handshake message:
# B's hello still comes before its go-away (the session drops unsent frames on a fatal error).
$r = mux('echo_mux', 'garbage-first');
like($r->{out}, qr/^link closed hello=True goaway=\(0, 1\)$/m, 'garbage first: hello, then go-away (protocol)')
    or diag($r->{out}, $r->{err});

$t->wait_for(5, sub { $t->fd_total <= $fds });
is($t->fd_total, $fds, 'no fd leaked by the links and streams above');
unlike($t->error_log, qr/\[alert\]|\[emerg\]|signal \d+|exited on/, 'no alert, no worker crash');

# Reload with a link open: B's go-away names the stream in flight, which finishes.
my $hold = "$dir/hold";
my $pid = $t->fork_helper;
if (!$pid) {
    open STDOUT, '>', "$dir/reload.out";
    exec $t->{python}, $client, "127.0.0.1:" . $t->port('echo_mux'), 'reload', @keys, '--hold-file', $hold;
}
$t->wait_for(10, sub { $t->read_file('reload.out') =~ /stream 1 open/ });
$t->reload;
$t->write_file('hold', '');
$t->wait_for(20, sub { $t->read_file('reload.out') =~ /link closed/ });
my $out = $t->read_file('reload.out');
like($out, qr/^goaway last=1 reason=0$/m, 'reload: go-away (normal) with the stream in flight as last id') or diag($out);
like($out, qr/^stream 1 finished: before after$/m, 'the stream in flight finishes');
like($out, qr/^link closed$/m, 'then the old worker closes the link');

done_testing;
