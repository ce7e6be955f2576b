#!/usr/bin/perl
# A recorded IK first message, replayed by someone without the client's key: the server
# answers it (Noise cannot tell a replay from the client), but the client counts as
# authenticated only once its first transport frame opens, which a replayer cannot make.
# So no upstream connection is opened, no access-log line carries the client's key, and the
# info line says why; the status counters count each as a replay, however the replayer
# ends the connection (close, handshake timeout, TCP reset, a garbage frame). Our own
# initiators (the CLI, noise_upstream) send an empty frame right after such handshakes, so
# servers that speak first still work.

use strict;
use warnings;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_LINGER);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $server_pub = $t->keygen('server');
my $client_pub = $t->keygen('client');
$t->keygen('gateway');
$t->write_file('trusted', "$client_pub\n", 0644);
$t->scripted_backend('sink', "BACKEND\n");
my $dir = $t->dir;
my $ik = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';

$t->write_config(<<"END" . NoiseTest::STATUS_HTTP);
stream {
    log_format noise '\$server_port \$status [\$noise_client_key]';
    access_log %%TESTDIR%%/logs/access.log noise;
    noise_private_key %%TESTDIR%%/server.key;
    noise_handshake_timeout 3s;
    server {
        noise_listen 127.0.0.1:%%PORT_main%%;
        noise_trusted_keys %%TESTDIR%%/trusted;
        noise_protocol $ik Noise_KK_25519_ChaChaPoly_BLAKE2s;
        proxy_pass 127.0.0.1:%%PORT_sink%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_first%%;
        noise_protocol $ik;
        return "server speaks first\\n";
    }
    server {
        listen 127.0.0.1:%%PORT_gw%%;
        noise_upstream on;
        noise_upstream_protocol $ik;
        noise_upstream_private_key %%TESTDIR%%/gateway.key;
        noise_upstream_server_key 127.0.0.1:%%PORT_first%% %%TESTDIR%%/server.pub;
        proxy_pass 127.0.0.1:%%PORT_first%%;
    }
}
END
$t->run;
my $port = $t->port('main');
my @ik = ('--protocol', $ik, '--key', "$dir/client.key", '--remote-key', "$dir/server.pub");

# A genuine IK client gets through.
my $r = $t->noise_client($port, "hello\n", @ik);
is($r->{out}, "BACKEND\n", 'genuine IK client: through');
my $backend = $t->count_of('sink');

# Record the client's IK message 1: a listener that keeps whatever the CLI sends first.
my $cap_port = $t->port('cap');
my $pid = $t->fork_helper;
if (!$pid) {
    my $l = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$cap_port", Listen => 1, ReuseAddr => 1) or die;
    my ($all, $buf) = ('', '');
    # The first connection may be wait_port's probe, which sends nothing.
    while (!length $all) {
        my $c = $l->accept or die;
        my $rin = '';
        vec($rin, fileno($c), 1) = 1;
        while (select(my $rout = $rin, undef, undef, 1)) { sysread($c, $buf, 65536) or last; $all .= $buf }
    }
    open my $fh, '>', "$dir/message1" or die;
    binmode $fh;
    print $fh $all;
    close $fh;
    exit 0;
}
$t->wait_port($cap_port);
$t->run_cmd([$t->cli, 'connect', "127.0.0.1:$cap_port", '-N', @ik], "secret\n", 5);
ok($t->wait_for(5, sub { -s "$dir/message1" }), 'recorded the IK message 1');
my $message1 = $t->read_file('message1');

# Replay it 5 times; each replayer reads the answer and gives up.
my $mark = $t->error_log_mark;
my $log_mark = length $t->read_file('logs/access.log');
my $answered = 0;
for (1 .. 5) {
    # Up to 5 s for the answer (valgrind is slow), done as soon as it comes.
    my ($got, $closed) = $t->raw_exchange($port, $message1, timeout => 5, until_data => 1);
    $answered++ if length $got;
}
is($answered, 5, 'the server answers each replay (it cannot tell) ...');
# ... and one that waits for the server to give up.
my ($got, $closed) = $t->raw_exchange($port, $message1, timeout => 6);
ok($closed, 'a replayer that waits is closed at the handshake timeout');
sleep 0.5;
is($t->count_of('sink'), $backend, 'no replay opened an upstream connection');
my $access = substr($t->read_file('logs/access.log'), $log_mark);
unlike($access, qr/\Q$client_pub\E/, "no access-log line carries the client's key");
is(scalar(() = $access =~ / 200 /g), 0, 'no replay is logged as a success');
my $since = $t->error_log_since($mark);
my @closed = $since =~ /\[info\].*noise: handshake failed: connection closed before the client's first transport message, which this protocol needs to authenticate it \(a replayed handshake message\?\)/g;
is(scalar @closed, 5, 'five info lines say why');
like($since, qr/\[info\].*noise: handshake timed out waiting for the client's first transport message/,
    'the one that waited: timed out, and why');
unlike($since, qr/\[(error|crit|alert|emerg)\]/, 'nothing at error level');

# Replayers that end with a TCP reset once they have the answer (SO_LINGER 0), and one that
# sends a garbage frame: replays too, not socket errors.
$mark = $t->error_log_mark;
for (1 .. 3) {
    my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port") or die "connect: $!";
    binmode $s;
    syswrite($s, $message1);
    my $rin = '';
    vec($rin, fileno($s), 1) = 1;
    select(my $rout = $rin, undef, undef, 5) and sysread($s, my $answer, 65536);
    setsockopt($s, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) or die "SO_LINGER: $!";
    close $s;
}
$t->raw_exchange($port, $message1 . "\x00\x12" . "\x00" x 18, timeout => 5);
sub replay_lines {
    my $since = $t->error_log_since($mark);
    return (scalar(() = $since =~ /\[info\].*noise: handshake failed: recv\(\) failed \(104: Connection reset by peer\) before the client's first transport message, which this protocol needs to authenticate it \(a replayed handshake message\?\)/g),
        scalar(() = $since =~ /\[info\].*noise: handshake failed: the client's first transport message is not valid \(decryption failed [^)]*\)\), which this protocol needs to authenticate it \(a replayed handshake message\?\)/g));
}
$t->wait_for(5, sub { my ($reset, $bad) = replay_lines(); $reset == 3 && $bad == 1 });
my ($reset, $bad) = replay_lines();
is($reset, 3, 'three resets: each an info line that says replay') or diag($t->error_log_since($mark));
is($bad, 1, 'a garbage first frame: an info line that says replay');
unlike($t->error_log_since($mark), qr/\[(error|crit|alert|emerg)\]/, 'nothing at error level');
my $status = $t->metrics;
my %count = $status =~ /^nginx_noise_handshakes_total\{side="server",result="failed",reason="(\w+)"\} (\d+)$/mg;
is($count{replay}, 5 + 1 + 3 + 1, 'counted as replays: 5 closes, the timeout, 3 resets, the garbage frame');
is($count{socket}, 0, 'none as a socket error');
is($count{timeout}, 0, 'none as a timeout');
is($count{decrypt}, 0, 'none as a decryption failure');

# KK: the client's key is known beforehand, message 1 just as replayable.
$r = $t->noise_client($port, "kk\n", '--protocol', 'Noise_KK_25519_ChaChaPoly_BLAKE2s',
    '--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
is($r->{out}, "BACKEND\n", 'genuine KK client: through');

# Servers that speak first: the CLI and noise_upstream send an empty frame at once.
$r = $t->noise_client($t->port('first'), '', @ik);
is($r->{out}, "server speaks first\n", 'IK client that sends nothing: the server still speaks first');
($got) = $t->plain_exchange($t->port('gw'), '', keep_open => 1, timeout => 5);
is($got, "server speaks first\n", 'noise_upstream IK to a back end that speaks first');
done_testing;
