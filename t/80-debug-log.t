#!/usr/bin/perl
# Debug logging (nginx built --with-debug, `error_log ... debug`): each handshake step with
# its sizes, the negotiation decision, keys by fingerprint only, frame lengths on recv and
# send, buffer decisions, for the server side, a K pattern trying trusted keys, and the
# upstream side. Nothing of it reaches an `info` log. `tcp_nodelay` is set before the
# handshake where the server wants it and not at all where it is off (as SSL does).

use strict;
use warnings;
use Digest::SHA qw(sha256_hex);
use MIME::Base64 qw(decode_base64);
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $configure = $t->run_cmd([$t->{nginx}, '-V'])->{err};
plan skip_all => "nginx is built without --with-debug" unless $configure =~ /--with-debug/;

my %pub = map { $_ => $t->keygen($_) } qw(server client other stranger);
$t->write_file('kk.pub', "$pub{other}\n$pub{client}\n", 0644);
$t->echo_backend('echo');
my $dir = $t->dir;
$t->write_config(<<'END');
error_log %%TESTDIR%%/logs/debug.log debug;
stream {
    noise_private_key %%TESTDIR%%/server.key;

    server {
        noise_listen 127.0.0.1:%%PORT_xx%%;
        proxy_pass 127.0.0.1:%%PORT_echo%%;
        proxy_half_close on;
    }
    server {
        noise_listen 127.0.0.1:%%PORT_nodelay_off%%;
        tcp_nodelay off;
        return "no nodelay\n";
    }
    server {
        noise_listen 127.0.0.1:%%PORT_kk%%;
        noise_protocol Noise_KK_25519_ChaChaPoly_BLAKE2s;
        noise_trusted_keys %%TESTDIR%%/kk.pub;
        return "kk\n";
    }
    server {
        listen 127.0.0.1:%%PORT_gateway%%;
        noise_upstream on;
        noise_upstream_private_key %%TESTDIR%%/client.key;
        noise_upstream_server_key 127.0.0.1:%%PORT_xx%% %%TESTDIR%%/server.pub;
        proxy_pass 127.0.0.1:%%PORT_xx%%;
        proxy_half_close on;
    }
}
END
$t->run;

sub fingerprint { 'SHA256:' . substr(sha256_hex(decode_base64($_[0])), 0, 16) }

# Lines of connection *N in the debug log, in order.
sub lines_of {
    my ($log, $n) = @_;
    return grep { /\*$n / } split /\n/, $log;
}

# The connection number of the first debug line matching $re after $mark.
sub connection_of {
    my ($log, $re) = @_;
    return $log =~ /\*(\d+) $re/ ? $1 : undef;
}

my @key = ('--key', "$dir/client.key", '--remote-key', "$dir/server.pub");
my $debug_mark = length($t->read_file('logs/debug.log') // '');

# Server side, XX.
my $r = $t->noise_client($t->port('xx'), "ping over noise\n", @key);
is($r->{out}, "ping over noise\n", 'XX client through the debug-logged server') or diag($r->{err});
$t->wait_for(5, sub { $t->read_file('logs/debug.log') =~ /noise_send_chain: 16 bytes/ });
my $log = substr($t->read_file('logs/debug.log'), $debug_mark);
my $n = connection_of($log, 'noise handshake handler: start');
ok(defined $n, 'handshake handler start logged') or BAIL_OUT('no debug lines');
my $conn = join "\n", lines_of($log, $n);
like($conn, qr/noise handshake: recv\(\) \d+ bytes/, 'raw handshake recv sizes');
like($conn, qr/noise handshake: received message: negotiation data 6 bytes, noise message 37 bytes/,
    'message 1 with its field sizes (XX: e, and the 5-byte key-confirmation request of docs/protocol.md §4.8)');
like($conn, qr/noise handshake: negotiation: accepted Noise_XX_25519_ChaChaPoly_BLAKE2s/,
    'negotiation decision');
like($conn, qr/noise handshake: sending message 2: negotiation data 0 bytes, noise message \d+ bytes/,
    'message 2 with its sizes');
like($conn, qr/noise handshake: send\(\) \d+ of \d+ bytes/, 'raw handshake send sizes');
my $client_fp = fingerprint($pub{client});
like($conn, qr/noise handshake: peer static key \Q$client_fp\E accepted/,
    'client key by fingerprint when learnt');
like($conn, qr/noise: Noise_XX_25519_ChaChaPoly_BLAKE2s established \(Initial stage\), peer static key \Q$client_fp\E, handshake hash [0-9a-f]{16}\.\.\./,
    'established: protocol, peer fingerprint, hash prefix');
like($conn, qr/noise recv: opened a frame of 36 bytes/, 'frame length on recv (16-byte line + 20)');
like($conn, qr/noise_recv: 16 of \d+/, 'plaintext handed to nginx');
like($conn, qr/noise send: sealed 36 bytes of frames/, 'frame length on send');
like($conn, qr/noise_send_chain: 16 bytes sealed/, 'plaintext taken from nginx');

# A bulk transfer: transport recv() sizes (a short line may come with the last handshake
# message and need none).
$debug_mark = length $t->read_file('logs/debug.log');
my $bulk = 'x' x 200_000;
$r = $t->noise_client($t->port('xx'), $bulk, @key);
is(length $r->{out}, length $bulk, 'bulk echo through the debug-logged server') or diag($r->{err});
$log = substr($t->read_file('logs/debug.log'), $debug_mark);
like($log, qr/noise recv: recv\(\) \d+ of \d+ bytes/, 'transport recv sizes');
like($log, qr/noise send: send\(\) \d+ of \d+ bytes/, 'transport send sizes');

# Keys never appear in full in debug lines, public or private.
my $private = $t->read_file('client.key') =~ s/\s+//gr;
my $server_private = $t->read_file('server.key') =~ s/\s+//gr;
my @debug_lines = grep { /\[debug\]/ } split /\n/, $t->read_file('logs/debug.log');
ok(!(grep { index($_, $pub{client}) >= 0 || index($_, $pub{server}) >= 0 } @debug_lines),
    'no public key in full in debug lines');
ok(!(grep { index($_, $private) >= 0 || index($_, $server_private) >= 0 } @debug_lines),
    'no private key in debug lines');

# tcp_nodelay: on by default, set before the handshake; off means never set.
my @lines = split /\n/, $conn;
my ($nodelay) = grep { $lines[$_] =~ /tcp_nodelay/ } 0 .. $#lines;
my ($start) = grep { $lines[$_] =~ /noise handshake handler: start/ } 0 .. $#lines;
ok(defined $nodelay && defined $start && $nodelay > $start
    && !grep({ /noise handshake: recv/ } @lines[0 .. $nodelay]),
    'tcp_nodelay set before the handshake reads anything') or diag(join "\n", @lines[0 .. 8]);

$debug_mark = length $t->read_file('logs/debug.log');
$r = $t->noise_client($t->port('nodelay_off'), '', @key);
is($r->{out}, "no nodelay\n", 'server with tcp_nodelay off answers') or diag($r->{err});
$t->wait_for(5, sub { substr($t->read_file('logs/debug.log'), $debug_mark) =~ /noise_send: \d+ of \d+/ });
$log = substr($t->read_file('logs/debug.log'), $debug_mark);
$n = connection_of($log, 'noise handshake handler: start');
my @off = lines_of($log, $n);
ok(@off > 5, 'its connection is debug-logged');
ok(!grep({ /tcp_nodelay/ } @off), 'tcp_nodelay off: never set');

# A K pattern: trusted keys tried in turn, by fingerprint.
$debug_mark = length $t->read_file('logs/debug.log');
$r = $t->noise_client($t->port('kk'), '', @key, '--protocol', 'Noise_KK_25519_ChaChaPoly_BLAKE2s');
is($r->{out}, "kk\n", 'KK client') or diag($r->{err});
$t->wait_for(5, sub { substr($t->read_file('logs/debug.log'), $debug_mark) =~ /noise_send: \d+ of \d+/ });
$log = substr($t->read_file('logs/debug.log'), $debug_mark);
like($log, qr/trusted key \Q$client_fp\E as the initiator's: authenticated/,
    'KK: the client key authenticates, named by fingerprint');
my $other_fp = fingerprint($pub{other});
unlike($log, qr/trusted key \Q$other_fp\E as the initiator's: authenticated/, 'KK: the other key does not');

# A KK client whose key is not trusted: every trusted key is tried, none authenticates.
$debug_mark = length $t->read_file('logs/debug.log');
$r = $t->noise_client($t->port('kk'), '', '--key', "$dir/stranger.key", '--remote-key', "$dir/server.pub",
    '--protocol', 'Noise_KK_25519_ChaChaPoly_BLAKE2s');
isnt($r->{rc}, 0, 'untrusted KK client refused');
$t->wait_for(5, sub { substr($t->read_file('logs/debug.log'), $debug_mark) =~ /handshake failed/ });
$log = substr($t->read_file('logs/debug.log'), $debug_mark);
my @tried = $log =~ /trusted key (SHA256:[0-9a-f]{16}) as the initiator's: no/g;
is(join(',', sort @tried), join(',', sort $client_fp, $other_fp), 'both trusted keys tried, by fingerprint');

# Upstream side: nginx as the initiator.
$debug_mark = length $t->read_file('logs/debug.log');
my ($got) = $t->plain_exchange($t->port('gateway'), "through the gateway\n");
is($got, "through the gateway\n", 'noise_upstream hop');
$t->wait_for(5, sub { substr($t->read_file('logs/debug.log'), $debug_mark) =~ /noise upstream: connected/ });
$log = substr($t->read_file('logs/debug.log'), $debug_mark);
my $xx = $t->port('xx');
$n = connection_of($log, "noise upstream: connecting to 127\\.0\\.0\\.1:$xx");
ok(defined $n, 'upstream connect logged');
my $up = join "\n", lines_of($log, $n);
like($up, qr/noise handshake: sending message 1: negotiation data 6 bytes, noise message 37 bytes/,
    'upstream message 1 (queued at construction) is logged');
like($up, qr/negotiation: the responder accepted our offer/, 'upstream negotiation outcome');
my $server_fp = fingerprint($pub{server});
like($up, qr/established \(Initial stage\), peer static key \Q$server_fp\E/, 'upstream established, server fingerprint');

# Bad input with debug logging on: garbage and a torn handshake, then the workers are the same.
my $workers = $t->worker_set;
$t->raw_exchange($t->port('xx'), "\x00\x06" . "\xff" x 6 . "\x00\x20" . "\x01" x 32, timeout => 2);
$t->raw_exchange($t->port('xx'), "\xff\xff\xff", half_close => 1, timeout => 2);
$t->raw_exchange($t->port('kk'), "GET / HTTP/1.0\r\n\r\n", timeout => 2);
is($t->worker_set, $workers, 'bad input under debug logging: no worker died');
unlike($t->error_log, qr/\[(alert|crit|emerg)\]/, 'no alert or crit');

# The info-level log has none of it.
unlike($t->error_log, qr/noise handshake:|noise_recv|noise send/, 'no debug lines in the info log');

done_testing;
