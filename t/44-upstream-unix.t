#!/usr/bin/perl
# noise_upstream to unix-domain back ends: nginx (noise_upstream on, proxy_pass unix:...)
# -> nginx (noise_listen unix:...) -> plain echo, with 1 MiB each way; a group whose first
# server is a unix path where nothing listens (a failed attempt, then the next server); a
# unix back end that accepts and closes at once, and one that accepts and stalls (bounded by
# proxy_connect_timeout): failed attempts, never connected.

use strict;
use warnings;
use Digest::MD5 qw(md5_hex);
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
$t->keygen($_) for qw(a b);
$t->echo_backend('echo');
my $dir = $t->dir;
# nginx's workers (another user when the suite runs as root) connect to sockets in the test
# directory: they need to search it and write to the socket files.
chmod 0755, $dir;

# A socket file that is bound but never listens: connect() is refused.
my $dead = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => "$dir/dead.sock") or die "dead.sock: $!";
chmod 0666, "$dir/dead.sock";
# Unix back ends that accept and then close at once, or stay silent.
for my $mode (qw(close stall)) {
    my $pid = $t->fork_helper;
    if (!$pid) {
        my $l = IO::Socket::UNIX->new(Type => SOCK_STREAM, Local => "$dir/$mode.sock", Listen => 16) or die "$mode.sock: $!";
        chmod 0666, "$dir/$mode.sock";
        my @held;
        while (my $c = $l->accept) {
            if ($mode eq 'close') { close $c } else { push @held, $c }
        }
        exit 0;
    }
}
$t->wait_for(5, sub { -S "$dir/close.sock" && -S "$dir/stall.sock" }) or die 'unix back ends did not start';

$t->write_config(<<'END');
stream {
    log_format up '$server_port $upstream_addr $noise_upstream_protocol $status';
    access_log %%TESTDIR%%/logs/access.log up;

    server { noise_listen unix:%%TESTDIR%%/b.sock; noise_private_key %%TESTDIR%%/b.key; noise_upstream off;
             proxy_pass 127.0.0.1:%%PORT_echo%%; proxy_half_close on; }

    upstream pair { server unix:%%TESTDIR%%/dead.sock; server unix:%%TESTDIR%%/b.sock; }
    upstream closing { server unix:%%TESTDIR%%/close.sock; server unix:%%TESTDIR%%/b.sock; }
    upstream stalling { server unix:%%TESTDIR%%/stall.sock; server unix:%%TESTDIR%%/b.sock; }

    noise_upstream on;
    noise_upstream_private_key %%TESTDIR%%/a.key;
    server { listen 127.0.0.1:%%PORT_a%%; proxy_pass unix:%%TESTDIR%%/b.sock; proxy_half_close on; }
    server { listen 127.0.0.1:%%PORT_pair%%; proxy_pass pair; proxy_half_close on; }
    server { listen 127.0.0.1:%%PORT_dead%%; proxy_pass unix:%%TESTDIR%%/dead.sock; }
    server { listen 127.0.0.1:%%PORT_closing%%; proxy_pass closing; proxy_half_close on; }
    server { listen 127.0.0.1:%%PORT_stalling%%; proxy_pass stalling; proxy_half_close on; proxy_connect_timeout 1s; }
}
END
$t->run;
my $workers = $t->worker_set;
my %port = map { $_ => $t->port($_) } qw(a pair dead closing stalling);

my $big = '';
$big .= md5_hex($_) x 64 for 1 .. 512;
my ($got) = $t->plain_exchange($port{a}, $big, timeout => 20);
is(length $got, length $big, 'unix chain: 1 MiB back');
is(md5_hex($got), md5_hex($big), 'unix chain: checksum matches');
sleep 0.3;
like($t->read_file('logs/access.log'), qr{^$port{a} unix:\Q$dir\E/b\.sock Noise_XX_25519_ChaChaPoly_BLAKE2s 200$}m,
    'unix chain: logged with the unix upstream and the protocol');

# Nothing listens: a failed attempt, as nginx words it, then the next server.
my $mark = $t->error_log_mark;
my $ok = 0;
for my $i (1 .. 4) {
    ($got) = $t->plain_exchange($port{pair}, "pair $i\n", timeout => 10);
    $ok++ if $got eq "pair $i\n";
}
is($ok, 4, 'dead unix path first in the group: every session served by the next server');
like($t->error_log_since($mark), qr{connect\(\) to unix:\Q$dir\E/dead\.sock failed \(111: Connection refused\)},
    'dead unix path: the refused connect is logged');

$mark = $t->error_log_mark;
my $closed;
($got, $closed) = $t->plain_exchange($port{dead}, "x\n", timeout => 5);
ok($closed && $got eq '', 'dead unix path alone: the session closes with nothing');
sleep 0.3;
like($t->read_file('logs/access.log'), qr{^$port{dead} unix:\Q$dir\E/dead\.sock - 502$}m, 'dead unix path alone: 502');

# A back end that accepts and closes, one that accepts and stalls: failed attempts.
for my $case (['closing', 'close', qr/connection closed during the handshake|Connection reset by peer|Broken pipe/], ['stalling', 'stall', qr/timed out/]) {
    my ($name, $sock, $why) = @$case;
    $mark = $t->error_log_mark;
    ($got) = $t->plain_exchange($port{$name}, "$name\n", timeout => 10);
    is($got, "$name\n", "$name unix back end: the next server serves the session");
    like($t->error_log_since($mark), qr{\[error\].*noise: NoiseSocket handshake with upstream unix:\Q$dir\E/$sock\.sock failed: .*$why},
        "$name unix back end: a failed attempt, saying why");
}

is($t->worker_set, $workers, 'workers survive');
unlike($t->error_log, qr/\[(crit|alert|emerg)\]/, 'nothing critical');
done_testing;
