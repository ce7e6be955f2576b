#!/usr/bin/perl
# Bad input on noise_listen: garbage, oversize lengths, a bad MAC mid-stream, untrusted and
# wrong keys, a client that stalls mid-handshake, a FIN inside a frame, a client that stops
# reading. Each gets a clean close and one `noise:` log line at info; the worker survives
# (same pid) and its open fds return to the baseline; memory stays bounded.

use strict;
use warnings;
use IO::Socket::INET;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen('server');
my $client_pub = $t->keygen('client');
$t->keygen('other');
my $other_pub = $t->read_file('other.pub');
$t->write_file('trusted', $other_pub);
$t->echo_backend('echo');
$t->source_backend('source');

$t->write_config(<<'END');
stream {
    noise_private_key %%TESTDIR%%/server.key;
    noise_handshake_timeout 1s;
    server {
        noise_listen 127.0.0.1:%%PORT_main%%;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_trusted%%;
        noise_trusted_keys %%TESTDIR%%/trusted;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_flood%%;
        proxy_pass 127.0.0.1:%%PORT_source%%;
    }
}
END
$t->run;

my $workers = $t->worker_set;
my $dir = $t->dir;
my @key = ('--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
my ($main, $trusted, $flood) = map { $t->port($_) } qw(main trusted flood);
my $baseline = $t->fd_total;
ok($baseline > 0, "workers $workers have $baseline fds");

# Runs $code, then checks the aftermath: one `noise:` info line matching $re, the same
# worker, fds back to the baseline, no error-level lines.
sub bad_input {
    my ($name, $re, $code) = @_;
    my $mark = $t->error_log_mark;
    $code->();
    my $lines = $t->wait_for(3, sub {
        my @l = grep { /noise:/ } split /\n/, $t->error_log_since($mark);
        @l ? \@l : undef;
    }) || [];
    is(scalar @$lines, 1, "$name: one log line") or diag(join "\n", @$lines);
    like($lines->[0] // '', qr/\[info\] .*$re.*client: 127\.0\.0\.1/, "$name: info line says what happened");
    unlike($t->error_log_since($mark), qr/\[(error|crit|alert|emerg)\]/, "$name: nothing at error level");
    is($t->worker_set, $workers, "$name: workers survive");
    my $fds = $t->wait_for(3, sub { $t->fd_total == $baseline });
    ok($fds, "$name: worker fds back to baseline") or diag($t->fd_total . " vs $baseline");
}

bad_input('garbage negotiation data', qr/noise: handshake failed: refused negotiation data 6a756e6b/, sub {
    my ($got, $closed) = $t->raw_exchange($main, "\x00\x04junk\x00\x20" . ("\x01" x 32));
    is(unpack('H*', $got), '000300' . '01ff0000', 'garbage: explicit reject 00 03 00 01 ff 00 00');
    ok($closed, 'garbage: closed');
});

# "GE" announces 18245 bytes of negotiation data: refused from the length alone.
bad_input('garbage then FIN', qr/noise: handshake failed: handshake message announces negotiation data of 18245 bytes, more than the 256 allowed/, sub {
    my (undef, $closed) = $t->raw_exchange($main, "GET / HTTP/1.0\r\n\r\n", half_close => 1);
    ok($closed, 'http garbage + FIN: closed');
});

bad_input('oversize lengths', qr/noise: handshake failed: handshake message announces negotiation data of 65535 bytes, more than the 256 allowed/, sub {
    my ($got, $closed) = $t->raw_exchange($main, "\xff\xff" . ("A" x 65535) . "\xff\xff" . ("B" x 65535));
    ok($closed, 'oversize: closed');
});

bad_input('low-order ephemeral key', qr/noise: handshake failed: peer sent a low-order public key/, sub {
    # Empty negotiation data (the default XX), then an XX message 1 whose e is the zero point.
    my ($got, $closed) = $t->raw_exchange($main, "\x00\x00\x00\x20" . ("\x00" x 32));
    is($got, '', 'low-order e: no answer');
    ok($closed, 'low-order e: closed');
});

bad_input('stalled handshake', qr/noise: handshake timed out/, sub {
    my $pid = $t->spawn($t->{python}, $t->{peer}, 'connect', "127.0.0.1:$main", '--stall', @key);
    # Python takes a moment to start; the 1 s timer starts at its connect.
    sleep 3;
    kill 'KILL', $pid;
});

bad_input('bad MAC mid-stream', qr/noise: reading from peer: decryption failed \(bad MAC in transport message\)/, sub {
    # Frame 3 of 5 is corrupt: nothing from it on reaches the backend and echoes back.
    # (Whether the client then sees an error or a plain close depends on timing.)
    my $r = $t->python_client($main, 'd' x 300_000, '--corrupt-frame', 3, @key);
    ok(length $r->{out} <= 2 * 65517, 'bad MAC: the stream stops before the corrupt frame');
});

bad_input('FIN inside a frame', qr/noise: peer closed the connection: connection closed inside a frame/, sub {
    my $r = $t->python_client($main, 'hello', '--truncate', @key);
});

bad_input('wrong server key', qr/noise: handshake failed: decryption failed/, sub {
    my $r = $t->noise_client($main, 'x', '--protocol', 'Noise_IK_25519_AESGCM_SHA256',
        '--key', "$dir/client.key", '--remote-key', "$dir/other.pub");
    isnt($r->{rc}, 0, 'wrong key: client fails');
});

bad_input('untrusted key, XX', qr/noise: handshake failed: client key not in trusted keys: \Q$client_pub\E/, sub {
    # XX reveals the client key in its last message, after which NoiseSocket allows no
    # explicit reject: the client just sees the connection close, with nothing echoed.
    my $r = $t->noise_client($trusted, 'x', @key);
    is($r->{out}, '', 'untrusted XX: nothing gets through');
});

bad_input('untrusted key, IK', qr/noise: handshake failed: client key not in trusted keys: \Q$client_pub\E/, sub {
    my $r = $t->noise_client($trusted, 'x', '--protocol', 'Noise_IK_25519_ChaChaPoly_BLAKE2s', @key);
    like($r->{err}, qr/rejected by peer \(negotiation data 0001ff\)/, 'untrusted IK: explicit reject');
});

bad_input('no client key with trusted keys', qr/noise: handshake failed: connection closed during the handshake/, sub {
    # NN carries no client key: the server asks for a retry with XX, which this client
    # does not allow, so it gives up.
    my $r = $t->noise_client($trusted, 'x', '--protocol', 'Noise_NN_25519_ChaChaPoly_BLAKE2s');
    like($r->{err}, qr/handshake failed: protocol Noise_XX_25519_ChaChaPoly_BLAKE2s not allowed/,
        'NN against trusted keys: only a retry with XX is offered');
    is($r->{out}, '', 'NN against trusted keys: nothing gets through');
});

# 1000 handshakes that announce the largest lengths the wire allows (65535) and send all but
# the last byte; then 1000 that announce the largest message we allow (4096) likewise:
# memory grows only with what arrived and a legitimate message needs, under 16 MiB.
for my $case (["\xff\xff" . ("\x41" x 65534), 'announced 65535'],
              ["\x00\x00\x10\x00" . ("\x41" x 4095), 'announced 4096 (the cap)']) {
    my ($bytes, $what) = @$case;
    local $SIG{PIPE} = 'IGNORE';
    my $rss0 = $t->rss_total;
    my @held;
    for (1 .. 1000) {
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$main", Timeout => 5) or last;
        syswrite($s, $bytes);
        push @held, $s;
    }
    is(scalar @held, 1000, "$what: 1000 partial handshakes connected");
    sleep 2;
    my $grown = $t->rss_total - $rss0;
    ok($grown < 16 * 1024, "$what: RSS grew by $grown KiB (< 16 MiB)");
    close $_ for @held;
    ok($t->wait_for(5, sub { $t->fd_total == $baseline }), "$what: fds back to baseline");
}

# A client that stops reading while the backend floods: memory stays bounded.
{
    my $rss0 = $t->rss_total;
    my $pid = $t->spawn($t->{python}, $t->{peer}, 'connect', "127.0.0.1:$flood", '--no-read', @key);
    sleep 3;
    ok($t->fd_total >= $baseline + 2, 'backpressure: the session is alive, backend connected');
    my $rss1 = $t->rss_total;
    ok($rss1 - $rss0 < 8 * 1024, "backpressure: worker RSS grew by " . ($rss1 - $rss0) . " KiB (< 8 MiB)");
    kill 'KILL', $pid;
    waitpid($pid, 0);
    my $fds = $t->wait_for(3, sub { $t->fd_total == $baseline });
    ok($fds, 'backpressure: fds back to baseline after the client goes');
}

# And after all that, a good client still works.
my $r = $t->noise_client($main, "still fine\n", @key);
is($r->{out}, "still fine\n", 'good client after bad ones');
is($t->worker_set, $workers, 'same workers throughout');
done_testing;
