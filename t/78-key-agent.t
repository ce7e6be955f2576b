#!/usr/bin/perl
# noise_key_agent / noise_upstream_key_agent: the static private keys stay in the key agent
# (noisesocket agent, started here from build/) and nginx asks it for each X25519 without
# blocking (docs/nginx-integration.md §13). With 2 workers: XX and IK (two questions in
# sequence) against the CLI and the Python peer, key rotation, keys learned from the agent
# or read from a file, the upstream side (XX, IK); fail closed with one error line and
# reason key_agent for an agent that is down at start, killed mid-run (then served again
# after its restart, without a reload), silent, or answering garbage; the handshake timer
# and a client leaving while a question waits; a reload; nginx -t errors and the warning;
# and, as root, no copy of the private key in any worker's memory (found there with
# noise_private_key, so the check can fail).

use strict;
use warnings;
no warnings 'portable';    # /proc/PID/maps addresses are 64-bit
use Test::More;
use MIME::Base64 qw(decode_base64);
use Time::HiRes qw(sleep);
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
my $root = $> == 0;
my $server_pub = $t->keygen('server');
my $old_pub = $t->keygen('old');
my $back_pub = $t->keygen('back');
$t->keygen('client');
$t->write_file('agent.list', "$server_pub\n$old_pub\n", 0644);
$t->write_file('server.list', "$server_pub\n", 0644);
my $ik = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';
my $xx = 'Noise_XX_25519_ChaChaPoly_BLAKE2s';
# nginx's workers (another user when the suite runs as root) must reach the sockets.
chmod 0711, $dir;

sub start_agent {
    my ($sock, @keys) = @_;
    unlink $sock;
    my $pid = $t->spawn($t->cli, 'agent', (map { ('--key', "$dir/$_.key") } @keys),
        '--listen', "unix:$sock", $root ? ('--user', 'nobody') : ());
    $t->wait_for(5, sub { -S $sock }) or die "the agent did not start";
    return $pid;
}
sub stop_agent { my $pid = shift; kill 'TERM', $pid; waitpid($pid, 0) }

# Configuration errors and the warning.
my $srv = 'noise_listen 127.0.0.1:1; return x;';
for my $case (
    ["stream { server { $srv noise_private_key %%TESTDIR%%/server.key; noise_key_agent unix:%%TESTDIR%%/none.sock %%TESTDIR%%/server.list; } }",
        qr/"noise_key_agent" and "noise_private_key" exclude each other at one level.*nginx\.conf:\d+/, 'agent after a private key'],
    ["stream { noise_key_agent unix:%%TESTDIR%%/none.sock %%TESTDIR%%/server.list; noise_private_key %%TESTDIR%%/server.key; server { $srv } }",
        qr/"noise_private_key" and "noise_key_agent" exclude each other at one level.*nginx\.conf:\d+/, 'a private key after the agent'],
    ["stream { server { noise_upstream on; noise_upstream_private_key %%TESTDIR%%/server.key; noise_upstream_key_agent unix:%%TESTDIR%%/none.sock %%TESTDIR%%/server.list; proxy_pass 127.0.0.1:1; } }",
        qr/"noise_upstream_key_agent" and "noise_upstream_private_key" exclude each other.*nginx\.conf:\d+/, 'upstream: both'],
    ["stream { server { $srv noise_key_agent unix:%%TESTDIR%%/none.sock; } }",
        qr/cannot learn the public keys from the key agent at unix:\S+none\.sock: .*give its public key file.*nginx\.conf:\d+/, 'no agent and no key file'],
    ["stream { server { $srv noise_key_agent 127.0.0.1:9 %%TESTDIR%%/server.list; } }",
        qr/"noise_key_agent": invalid address "127\.0\.0\.1:9": expected unix:\/path.*nginx\.conf:\d+/, 'not a unix socket'],
    ["stream { server { $srv noise_key_agent unix:%%TESTDIR%%/none.sock %%TESTDIR%%/server.key.missing; } }",
        qr/"noise_key_agent": cannot read .*nginx\.conf:\d+/, 'a missing key file'],
) {
    $t->write_config($case->[0]);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$case->[2] fails nginx -t");
    like($out, $case->[1], "$case->[2]: says why and where");
}
$t->write_config("stream { server { $srv noise_key_agent unix:%%TESTDIR%%/none.sock %%TESTDIR%%/server.list; } }");
my ($rc, $out) = $t->test_config;
is($rc, 0, 'the agent unreachable, the keys from the file: nginx -t passes');
like($out, qr/\[warn\].*"noise_key_agent": the key agent at unix:\S+none\.sock cannot be reached now .*handshakes will fail until it runs/,
    'with a warning that says so');

my $agent_sock = "$dir/agent.sock";
my $agent = start_agent($agent_sock, 'server', 'old');
$t->spawn($t->{python}, $t->repo . '/t/lib/stub_agent.py', "$dir/silent.sock", 'silent');
$t->spawn($t->{python}, $t->repo . '/t/lib/stub_agent.py', "$dir/garbage.sock", 'garbage');
ok($t->wait_for(5, sub { -S "$dir/silent.sock" && -S "$dir/garbage.sock" }), 'the stub agents listen');

$t->write_config(<<'END' . NoiseTest::STATUS_HTTP);
stream {
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s Noise_IK_25519_ChaChaPoly_BLAKE2s;
    server { noise_listen 127.0.0.1:%%PORT_srv%%; noise_key_agent unix:%%TESTDIR%%/agent.sock;
             return "in $noise_protocol\n"; }
    server { noise_listen 127.0.0.1:%%PORT_file%%;
             noise_key_agent unix:%%TESTDIR%%/agent.sock %%TESTDIR%%/agent.list; return "file\n"; }
    server { noise_listen 127.0.0.1:%%PORT_late%%;
             noise_key_agent unix:%%TESTDIR%%/late.sock %%TESTDIR%%/server.list; return "late\n"; }
    server { noise_listen 127.0.0.1:%%PORT_silent%%;
             noise_key_agent unix:%%TESTDIR%%/silent.sock %%TESTDIR%%/server.list; return "x\n"; }
    server { noise_listen 127.0.0.1:%%PORT_garbage%%;
             noise_key_agent unix:%%TESTDIR%%/garbage.sock %%TESTDIR%%/server.list; return "x\n"; }
    server { noise_listen 127.0.0.1:%%PORT_dies%%;
             noise_key_agent unix:%%TESTDIR%%/dies.sock %%TESTDIR%%/server.list; return "x\n"; }
    server { noise_listen 127.0.0.1:%%PORT_hstimer%%; noise_handshake_timeout 300ms;
             noise_key_agent unix:%%TESTDIR%%/silent.sock %%TESTDIR%%/server.list; return "x\n"; }
    server { noise_listen 127.0.0.1:%%PORT_back%%; noise_private_key %%TESTDIR%%/back.key;
             noise_trusted_keys %%TESTDIR%%/server.list; return "back saw $noise_client_key\n"; }
    server { listen 127.0.0.1:%%PORT_up%%; noise_upstream on;
             noise_upstream_key_agent unix:%%TESTDIR%%/agent.sock;
             proxy_pass 127.0.0.1:%%PORT_back%%; }
    server { listen 127.0.0.1:%%PORT_upik%%; noise_upstream on;
             noise_upstream_protocol Noise_IK_25519_ChaChaPoly_BLAKE2s;
             noise_upstream_server_key 127.0.0.1:%%PORT_back%% %%TESTDIR%%/back.pub;
             noise_upstream_key_agent unix:%%TESTDIR%%/agent.sock;
             proxy_pass 127.0.0.1:%%PORT_back%%; }
    server { listen 127.0.0.1:%%PORT_upsilent%%; noise_upstream on;
             noise_upstream_key_agent unix:%%TESTDIR%%/silent.sock %%TESTDIR%%/server.list;
             proxy_pass 127.0.0.1:%%PORT_back%%; }
}
END
$t->run;
my @workers = $t->worker_set;

sub cli { my ($port, @opts) = @_; return $t->noise_client($t->port($port), '', '--key', "$dir/client.key", @opts) }
sub py { my ($port, @opts) = @_; return $t->python_client($t->port($port), 'hi', '--key', "$dir/client.key", @opts) }
sub plain { my ($got) = $t->plain_exchange($t->port(shift), '', keep_open => 1, timeout => 5); return $got }
sub errors_since { my $m = shift; return grep { /\[(error|crit|alert|emerg)\]/ } split /\n/, $t->error_log_since($m) }
sub failures { $t->series('nginx_noise_handshakes_total{side="' . ($_[0] // 'server') . '",result="failed",reason="key_agent"}') // 0 }

# The server side, keys learned from the agent.
my $mark = $t->error_log_mark;
is(cli('srv')->{out}, "in $xx\n", 'XX, the key in the agent (CLI)');
is(cli('srv', '--protocol', $ik, '--remote-key', $server_pub)->{out}, "in $ik\n", 'IK: es then ss, two questions in sequence (CLI)');
is(py('srv')->{out}, "in $xx\n", 'XX (Python peer)');
my $r = py('srv', '--protocol', $ik, '--remote-key', $server_pub);
is($r->{out}, "in $ik\n", 'IK (Python peer)') or diag($r->{err});
is(cli('srv', '--protocol', $ik, '--remote-key', $old_pub)->{out}, "in $ik\n", 'rotation: IK to the second key of the agent');
$r = cli('srv', '--protocol', $ik, '--remote-key', $back_pub);
is($r->{out}, '', 'IK to a key nobody has: refused');
is(cli('file', '--protocol', $ik, '--remote-key', $old_pub)->{out}, "file\n", 'keys from the file, rotation too');
my $ok = 1;
for (1 .. 20) { $ok &&= cli('srv')->{out} eq "in $xx\n" }
ok($ok, '20 more handshakes, spread over both workers');
is(join("\n", errors_since($mark)), '', 'no error lines');

# The upstream side.
is(plain('up'), "back saw $server_pub\n", 'upstream XX: the back end saw the agent\'s key');
is(plain('upik'), "back saw $server_pub\n", 'upstream IK (ss while writing message 1, then se)');
is(join("\n", errors_since($mark)), '', 'still no error lines');

# Fail closed, one error line each, reason key_agent.
for my $case (
    ['silent', qr/key agent: unix:\S+silent\.sock: no answer from the key agent within 1000 ms/, 'an agent that never answers'],
    ['garbage', qr/key agent: unix:\S+garbage\.sock: malformed answer from the key agent/, 'an agent answering garbage'],
    ['late', qr/key agent: unix:\S+late\.sock: cannot reach the key agent: connect\(\) failed/, 'an agent not running'],
) {
    my ($port, $why, $what) = @$case;
    my $before = failures();
    $mark = $t->error_log_mark;
    is(cli($port)->{out}, '', "$what: refused");
    ok($t->wait_for(3, sub { errors_since($mark) >= 1 }), "$what: logged");
    my @lines = errors_since($mark);
    is(scalar(@lines), 1, "$what: one error line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/\[error\].*handshake failed: .*$why/, "$what: it says why");
    ok($t->wait_for(3, sub { failures() == $before + 1 }), "$what: counted with reason key_agent");
}

# Upstream: a failed attempt, one error line.
$mark = $t->error_log_mark;
is(plain('upsilent'), '', 'upstream, a silent agent: nothing gets through');
my @lines = errors_since($mark);
ok((grep { /NoiseSocket handshake with upstream \S+ failed: key agent: unix:\S+silent\.sock: no answer/ } @lines), 'upstream: the error line says why')
    or diag(join "\n", @lines);
ok(failures('upstream') >= 1, 'upstream: reason key_agent');

# The handshake timer ends the wait (the question is cancelled), and a client that leaves.
$mark = $t->error_log_mark;
is(cli('hstimer')->{out}, '', 'the handshake timer fires while the agent is silent');
like($t->error_log_since($mark), qr/\[info\].*handshake timed out/, 'the timeout is told');
is(join("\n", errors_since($mark)), '', 'and no error: the question was cancelled with the connection');
$mark = $t->error_log_mark;
$t->run_cmd(['timeout', '0.3', $t->cli, 'connect', '127.0.0.1:' . $t->port('silent'), '-N', '--key', "$dir/client.key"]);
ok($t->wait_for(3, sub { errors_since($mark) >= 1 }), 'a client that left mid-question: its handshake ends when the question does');
is(cli('srv')->{out}, "in $xx\n", 'and the workers serve on');
is($t->worker_set, join(',', @workers), 'no worker died');

# An agent that dies with a question in flight: that handshake fails at once, saying so.
my $dies = $t->spawn($t->{python}, $t->repo . '/t/lib/stub_agent.py', "$dir/dies.sock", 'silent');
ok($t->wait_for(5, sub { -S "$dir/dies.sock" }), 'a silent agent to kill');
$mark = $t->error_log_mark;
my $asker = $t->fork_helper;
if (!$asker) { exec 'timeout', '5', $t->cli, 'connect', '127.0.0.1:' . $t->port('dies'), '-N', '--key', "$dir/client.key"; exit 1 }
sleep 0.5;
kill 'KILL', $dies;
waitpid($asker, 0);
@lines = errors_since($mark);
is(scalar(@lines), 1, 'the agent died mid-question: one error line') or diag(join "\n", @lines);
like($lines[0] // '', qr/key agent: unix:\S+dies\.sock: the key agent closed the connection/, 'which says the agent closed the connection');

# The agent starts late, is killed, restarts: served again without a reload.
my $late = start_agent("$dir/late.sock", 'server');
is(cli('late')->{out}, "late\n", 'the agent started after nginx: served');
stop_agent($agent);
$mark = $t->error_log_mark;
is(cli('srv')->{out}, '', 'the agent killed: refused');
ok((grep { /key agent: unix:\S+agent\.sock: (the key agent closed the connection|cannot reach the key agent)/ } errors_since($mark)),
    'one error line says the agent is gone');
$agent = start_agent($agent_sock, 'server', 'old');
$ok = 1;
for (1 .. 6) { $ok &&= cli('srv')->{out} eq "in $xx\n" }
ok($ok, 'the agent restarted: every worker reconnects and serves, no reload');

# A reload during traffic: the master learns the keys again; nothing fails.
my $pid = fork // die;
if (!$pid) {
    my $fails = 0;
    for (1 .. 30) { $fails++ unless cli('srv')->{out} eq "in $xx\n" }
    exit($fails ? 1 : 0);
}
$t->reload;
waitpid($pid, 0);
is($? >> 8, 0, 'a reload during 30 handshakes: every one served');
is(cli('srv', '--protocol', $ik, '--remote-key', $server_pub)->{out}, "in $ik\n", 'after the reload');
stop_agent($late);

# The proof: after traffic, no worker's memory holds the private key.
SKIP: {
    skip 'reading another process\'s memory needs root', 7 unless $root;
    my $secret = $t->read_file('server.key');
    (my $text = $secret) =~ s/\s+//g;
    my $raw = decode_base64($text);
    is(length $raw, 32, 'the private key is 32 bytes');
    my $scan = sub {
        my $found = 0;
        for my $w ($t->worker_pids) {
            open my $maps, '<', "/proc/$w/maps" or next;
            open my $mem, '<:raw', "/proc/$w/mem" or next;
            while (my $line = <$maps>) {
                my ($from, $to, $perms) = $line =~ /^([0-9a-f]+)-([0-9a-f]+) (\S+)/ or next;
                next if $perms !~ /^r/ || $line =~ /\[(vvar|vsyscall)\]/;
                my $len = hex($to) - hex($from);
                sysseek($mem, hex($from), 0) or next;
                my $buf = '';
                my $got = sysread($mem, $buf, $len);
                next unless $got;
                $found++ if index($buf, $raw) >= 0 || index($buf, $text) >= 0;
            }
        }
        return $found;
    };
    # The agent first: a master that has read the key file once (a reload from
    # noise_private_key) may keep freed copies that later workers inherit.
    for my $case (['noise_key_agent unix:%%TESTDIR%%/agent.sock', 0, 'with noise_key_agent no worker holds a copy'],
                  ['noise_private_key %%TESTDIR%%/server.key', 1, 'with noise_private_key the key is found (the check can fail)']) {
        $t->write_config(<<"END");
stream { server { noise_listen 127.0.0.1:%%PORT_mem%%; $case->[0]; return "mem\\n"; } }
END
        my %old = map { $_ => 1 } $t->worker_pids;
        $t->reload;
        ok($t->wait_for(10, sub { my @w = $t->worker_pids; @w == $t->workers && !grep { $old{$_} } @w }),
            "the old workers are gone ($case->[0])");
        ok($t->wait_for(10, sub { cli('mem')->{out} eq "mem\n" }), "traffic ($case->[0])");
        cli('mem', '--protocol', $ik, '--remote-key', $server_pub) for 1 .. 4;
        my $found = $scan->();
        if ($case->[1]) { ok($found > 0, $case->[2]) } else { is($found, 0, $case->[2]) }
    }
}

unlike($t->error_log, qr/\[(alert|crit)\]/, 'no alert or crit line in the whole run (worker exits, reloads)');

done_testing;
