#!/usr/bin/perl
# noise_auth_request: a client key the key zone does not have (noise_keys ... miss=lookup) is
# put to an HTTP authority while the handshake waits without blocking the worker
# (docs/nginx-integration.md §6). The authority is t/lib/auth_authority.py, a threaded
# Python server whose behaviour the request path chooses. With 2 workers: allow (with
# attributes as $noise_key_attr_NAME), deny (IK: before message 2), answers cached in the
# zone (allow and deny, with their ttl), timeout, authority down / 500 / garbage / closing
# mid-response all refused with one error line, fail open, the handshake timer, a client
# that leaves mid-lookup, a reload mid-lookup, a worker exiting at once mid-lookup, the concurrency cap, 200 other clients served
# while lookups wait, the counters; bad directives fail nginx -t with file and line.

use strict;
use warnings;
use Test::More;
use lib 't/lib';
use NoiseTest;

my $t = NoiseTest->new;
my $dir = $t->dir;
my $server_pub = $t->keygen('server');
my $trusted_pub = $t->keygen('trusted');
$t->write_file('trusted.list', "$trusted_pub\n", 0644);
my $ik = 'Noise_IK_25519_ChaChaPoly_BLAKE2s';
my $ix = 'Noise_IX_25519_ChaChaPoly_BLAKE2s';
my $fresh = 0;
sub fresh { my $name = 'k' . ++$fresh; return ($name, $t->keygen($name)) }

# Configuration errors.
my $srv = 'noise_listen 127.0.0.1:1; noise_private_key %%TESTDIR%%/server.key; return x;';
for my $case (
    ["stream { noise_keys_zone d 1m; server { $srv noise_keys zone=d miss=lookup; } }",
        qr/"noise_keys" in \S+nginx\.conf:\d+ has "miss=lookup" but no "noise_auth_request"/, 'miss=lookup without an authority'],
    ["stream { noise_keys_zone d 1m; server { $srv noise_keys zone=d; noise_auth_request http://127.0.0.1:1/; } }",
        qr/"noise_auth_request" in \S+nginx\.conf:\d+ needs "noise_keys zone=NAME miss=lookup"/, 'an authority without miss=lookup'],
    ["stream { server { $srv noise_auth_request https://127.0.0.1:1/; } }", qr/it must start with http:\/\/ or unix:/, 'an https authority'],
    ["stream { server { $srv noise_auth_request http://no-such-host.invalid/; } }", qr/cannot resolve "no-such-host\.invalid:80"/, 'a name that does not resolve'],
    ["stream { server { $srv noise_auth_request unix:; } }", qr/it must be unix:\/path or unix:\/path:\/uri/, 'an empty unix path'],
    ["stream { server { $srv noise_auth_request_fail maybe; } }", qr/it must be "closed" or "open"/, 'a bad fail mode'],
    ["stream { server { $srv noise_auth_request_concurrency 0; } }", qr/invalid number "0"/, 'a zero concurrency'],
    ["stream { server { $srv noise_auth_request_concurrency 4 maybe; } }", qr/invalid "maybe", it must be "refuse" or "wait"/, 'a bad over-the-cap choice'],
    ["stream { server { $srv noise_auth_cache_valid forever=1m; } }", qr/invalid parameter "forever=1m"/, 'a bad cache_valid'],
    ["stream { server { $srv noise_auth_request_timeout 0; } }", qr/must be more than 0/, 'a zero timeout'],
) {
    $t->write_config($case->[0]);
    my ($rc, $out) = $t->test_config;
    isnt($rc, 0, "$case->[2] fails nginx -t");
    like($out, qr/$case->[1].*nginx\.conf(:\d+)?/s, "$case->[2]: says why and where");
}

my $auth = $t->port('auth');
$t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', $auth, $dir);
ok($t->wait_port($auth), 'the authority listens');
# nginx's workers (another user when the suite runs as root) must reach the socket.
chmod 0711, $dir;
mkdir "$dir/unix";
$t->spawn($t->{python}, $t->repo . '/t/lib/auth_authority.py', "$dir/auth.sock", "$dir/unix");
ok($t->wait_for(5, sub { -S "$dir/auth.sock" }), 'and one on a unix socket');
my $down = $t->refused_port('down');

my $base = "http://127.0.0.1:$auth";
my $echo = $t->echo_backend('echo');
$t->write_config(<<"END");
stream {
    noise_keys_zone devices 1m;
    noise_private_key %%TESTDIR%%/server.key;
    noise_protocol Noise_XX_25519_ChaChaPoly_BLAKE2s $ik $ix;
    noise_keys zone=devices miss=lookup;
    noise_auth_request_timeout 1s;
    log_format keys '\$server_port \$noise_client_key \$noise_key_attr_device \$noise_key_attr_tenant';
    access_log %%TESTDIR%%/logs/stream.log keys;
    server { noise_listen 127.0.0.1:%%PORT_allow%%; noise_auth_request $base/allow;
             return "device=\$noise_key_attr_device tenant=\$noise_key_attr_tenant\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_deny%%; noise_auth_request $base/deny; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_keys%%; noise_auth_request $base/keys;
             noise_auth_cache_valid allow=10m deny=1m;
             return "device=\$noise_key_attr_device\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_short%%; noise_auth_request $base/allow;
             noise_auth_cache_valid allow=1s deny=0; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_unix%%; noise_auth_request unix:%%TESTDIR%%/auth.sock:/allow;
             return "unix device=\$noise_key_attr_device\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_big%%; noise_auth_request $base/big; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_error%%; noise_auth_request $base/error; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_garbage%%; noise_auth_request $base/garbage; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_cut%%; noise_auth_request $base/cut; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_silent%%; noise_auth_request $base/silent; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_downsrv%%; noise_auth_request http://127.0.0.1:$down/; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_open%%; noise_auth_request $base/error;
             noise_auth_request_fail open; return "in anyway\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_hstimer%%; noise_auth_request $base/silent;
             noise_auth_request_timeout 30s; noise_handshake_timeout 1s; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_hold%%; noise_auth_request $base/hold;
             noise_auth_request_timeout 120s; noise_handshake_timeout 120s;
             noise_auth_request_concurrency 3; return "held device=\$noise_key_attr_device\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_queue%%; noise_auth_request $base/hold;
             noise_auth_request_timeout 60s; noise_auth_request_concurrency 1 wait;
             return "queued device=\$noise_key_attr_device\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_qtimer%%; noise_auth_request $base/hold;
             noise_auth_request_timeout 60s; noise_auth_request_concurrency 1 wait;
             noise_handshake_timeout 1s; return "in\\n"; }
    server { noise_listen 127.0.0.1:%%PORT_slowecho%%; noise_auth_request $base/slow;
             noise_auth_request_timeout 5s; proxy_half_close on; proxy_pass 127.0.0.1:$echo; }
    server { noise_listen 127.0.0.1:%%PORT_ordinary%%; noise_keys zone=devices miss=allow;
             noise_trusted_keys %%TESTDIR%%/trusted.list; return "ordinary\\n"; }
}
http {
    access_log off;
    server { listen 127.0.0.1:%%PORT_http%%; location /status { noise_status; } }
}
END
$t->run;

sub client {
    my ($port, $key, @opts) = @_;
    return $t->noise_client($t->port($port), '', '--key', "$dir/$key.key", @opts);
}
sub requests {
    my ($key) = @_;
    return scalar grep { /^\S+ \Q$key\E / } split /\n/, $t->read_file('requests.log');
}
sub errors_since { my $m = shift; return grep { /\[(error|crit|alert|emerg)\]/ } split /\n/, $t->error_log_since($m) }
sub slurp_num { my $v = $t->read_file(shift); chomp $v; return $v eq '' ? 0 : $v }

# Allow: attributes from the answer's headers, in the session and the stream log; the
# request carries key, protocol and address.
my ($k, $pub) = fresh();
my $mark = $t->error_log_mark;
(my $dev = lc $pub) =~ s/[^a-z0-9]//g;
$dev = 'd-' . substr($dev, 0, 8);
is(client('allow', $k)->{out}, "device=$dev tenant=acme\n", 'allowed by the authority, with its attributes (XX)');
like($t->read_file('requests.log'), qr{^/allow \Q$pub\E Noise_XX_25519_ChaChaPoly_BLAKE2s 127\.0\.0\.1 HTTP/1\.0$}m,
    'the request names the key (base64), the protocol and the client address, in HTTP/1.0');
ok($t->wait_for(3, sub { $t->read_file('logs/stream.log') =~ /^\d+ \Q$pub\E \Q$dev\E acme$/m }),
    'the attributes are $noise_key_attr_NAME in the stream log');
is(client('allow', $k)->{out}, "device=$dev tenant=acme\n", 'the second connection gets the same attributes');
is(requests($pub), 1, 'from the zone: the authority was asked once');
($k, $pub) = fresh();
is(client('allow', $k, '--protocol', $ik, '--remote-key', $server_pub)->{out}, "device=" . do { (my $d = lc $pub) =~ s/[^a-z0-9]//g; 'd-' . substr($d, 0, 8) } . " tenant=acme\n", 'IK too');
($k, $pub) = fresh();
like(client('allow', $k, '--protocol', $ix)->{out}, qr/^device=d-\w+ tenant=acme\n\z/, 'IX too (asked once its first transport frame opened)');
is(requests($pub), 1, 'IX: one request');
is(join('', errors_since($mark)), '', 'no error lines for allowed clients');

# A pause that found the socket empty: the XX client sends its data right behind message 3,
# while the handshake waits 2 s for the verdict, and it reaches the handler whole once the
# handshake resumes (the new bytes' event says there is something to read). IK pauses
# after message 1, so its client sends once message 2 has come, after the pause.
for my $case (['XX'], ['IK', '--protocol', $ik, '--remote-key', $server_pub]) {
    my ($name, @opts) = @$case;
    ($k, $pub) = fresh();
    my $data = "sent during the lookup ($name) " . ('x' x 3000) . "\n";
    my $r = $t->noise_client($t->port('slowecho'), $data, '--key', "$dir/$k.key", @opts);
    diag("rc=$r->{rc} err=$r->{err} out=" . substr($r->{out},0,80)) if $r->{out} ne $data;
    is($r->{out}, $data, "$name: what the client sent during a 2 s lookup comes back through proxy_pass");
}

# An authority on a unix socket.
($k, $pub) = fresh();
like(client('unix', $k)->{out}, qr/^unix device=d-\w+\n\z/, 'unix:/path:/uri: allowed with attributes');
like($t->read_file('unix/requests.log'), qr{^/allow \Q$pub\E Noise_XX}m, 'asked over the unix socket, at its URI');

# Deny: refused as an untrusted key is, IK before message 2.
($k, $pub) = fresh();
$mark = $t->error_log_mark;
my $r = client('deny', $k);
is($r->{out}, '', 'denied by the authority: nothing reaches the handler');
ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /\[info\].*client key not authorized: \Q$pub\E/ }), 'one info line names the key');
($k, $pub) = fresh();
$r = client('deny', $k, '--protocol', $ik, '--remote-key', $server_pub);
is($r->{out}, '', 'IK: denied');
like($r->{err}, qr/reject/i, 'IK: refused with an explicit reject, the client never gets message 2');
is(join('', errors_since($mark)), '', 'a deny is no error of ours');

# Cache: allow and deny answers are kept with their ttl.
my ($ka, $puba) = fresh();
my ($kd, $pubd) = fresh();
$t->write_file('allowed.keys', "$puba\n", 0644);
like(client('keys', $ka)->{out}, qr/^device=d-/, 'an allowed key');
like(client('keys', $ka)->{out}, qr/^device=d-/, 'allowed again, attributes from the zone');
is(requests($puba), 1, 'allow cached: one request for two handshakes');
is(client('keys', $kd)->{out}, '', 'a key the authority does not know: 401, refused');
is(client('keys', $kd)->{out}, '', 'refused again');
is(requests($pubd), 1, 'deny cached (negative caching): one request');
$t->write_file('allowed.keys', "$puba\n$pubd\n", 0644);
is(client('keys', $kd)->{out}, '', 'still refused from the zone after the authority changed its mind (deny=1m)');
($k, $pub) = fresh();
is(client('short', $k)->{out}, "in\n", 'allow=1s: allowed, kept for a second');
sleep 2.2;    # past the ttl (a lower bound: nothing here depends on being fast)
my $before = requests($pub);
is(client('short', $k)->{out}, "in\n", 'after the ttl');
is(requests($pub), $before + 1, 'the authority is asked again once the entry expired');

# Errors: refused (fail closed), one error line each, saying why.
for my $case (
    ['error', qr/status 500/, 'a 500'],
    ['garbage', qr/invalid HTTP response/, 'garbage'],
    ['big', qr/response headers are over 8192 bytes/, 'headers over 8 KiB'],
    ['cut', qr/closed the connection before its response headers ended/, 'a close mid-response'],
    ['silent', qr/did not answer within 1000ms/, 'a timeout'],
    ['downsrv', qr/cannot connect to the authority http:\/\/127\.0\.0\.1:\d+\/ at 127\.0\.0\.1:\d+: .*refused/i, 'the authority down'],
) {
    my ($port, $why, $what) = @$case;
    ($k, $pub) = fresh();
    $mark = $t->error_log_mark;
    $r = client($port, $k);
    is($r->{out}, '', "$what: refused");
    ok($t->wait_for(3, sub { errors_since($mark) >= 1 }), "$what: logged");
    my @lines = errors_since($mark);
    is(scalar(@lines), 1, "$what: one error line") or diag(join "\n", @lines);
    like($lines[0] // '', qr/\[error\].*noise_auth_request: .*$why.*\Q$pub\E|\[error\].*\Q$pub\E.*noise_auth_request: .*$why/, "$what: it says why, naming the key");
    unlike($lines[0] // '', qr/connect\(\) to/, "$what: not nginx's own connect line");
}

# Fail open: an error lets the client in, with one error line.
($k, $pub) = fresh();
$mark = $t->error_log_mark;
is(client('open', $k)->{out}, "in anyway\n", 'noise_auth_request_fail open: let in on an error');
my @lines = errors_since($mark);
is(scalar(@lines), 1, 'one error line');
like($lines[0] // '', qr/status 500.*; client key \Q$pub\E let in \(noise_auth_request_fail open\)/, 'saying so');

# The handshake timer ends the wait.
($k, $pub) = fresh();
$mark = $t->error_log_mark;
is(client('hstimer', $k)->{out}, '', 'the handshake timer ends a lookup that outlasts it');
ok($t->wait_for(3, sub { $t->error_log_since($mark) =~ /\[info\].*handshake timed out/ }), 'as a handshake timeout');
is(join('', errors_since($mark)), '', 'no error line (the lookup was cancelled)');

my $workers = $t->worker_set;

# A client that leaves mid-lookup (IK: it waits for message 2). TCP cannot tell its close
# from a half-close, so the lookup goes on; when it answers, the handshake ends with one
# info line and nothing of ours fails.
unlink "$dir/release";
($k, $pub) = fresh();
$mark = $t->error_log_mark;
my $fds = $t->fd_total;
my $pid = $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('hold'), '--key', "$dir/$k.key",
    '--protocol', $ik, '--remote-key', $server_pub);
ok($t->wait_for(5, sub { requests($pub) == 1 }), 'a lookup in flight');
kill 'KILL', $pid;
waitpid($pid, 0);
$t->write_file('release', '');
ok($t->wait_for(5, sub { $t->error_log_since($mark) =~ /\[info\].*noise: handshake failed/ }),
    'once the authority answers, the gone client is one info line');
is(join('', errors_since($mark)), '', 'no error line');
is($t->worker_set, $workers, 'no worker died');
ok($t->wait_for(5, sub { $t->fd_total <= $fds }), 'no descriptor left');

# The concurrency cap: 3 per worker; the rest refused at once, with a reason.
unlink "$dir/release";
my @keys = map { [fresh()] } 1 .. 10;
$mark = $t->error_log_mark;
my $max0 = slurp_num('max');
# Lookups of earlier steps that the authority still holds (it counts a request open until
# it answers, even after nginx gave up on it) are not this step's.
my $inflight0 = slurp_num('inflight');
my %out;
my @pids;
for my $i (0 .. $#keys) {
    my ($name) = @{$keys[$i]};
    my $p = $t->fork_helper;
    if (!$p) {
        my $r = $t->noise_client($t->port('hold'), '', '--key', "$dir/$name.key");
        $t->write_file("cap-$i.out", $r->{out});
        exit 0;
    }
    push @pids, $p;
}
my $cap = 3 * $t->workers;
my $refusals = sub { scalar(() = $t->error_log_since($mark) =~ /\[error\].*3 lookups of this server are already in flight on this worker, the noise_auth_request_concurrency limit/g) };
my $asked_cap = sub { scalar grep { requests($_->[1]) } @keys };
ok($t->wait_for(30, sub { $refusals->() + $asked_cap->() == @keys }), 'every client is either asked about or refused at once');
my $inflight = slurp_num('inflight');
my $refused = $refusals->();
cmp_ok($asked_cap->(), '<=', $cap, 'at most 3 lookups per worker reach the authority (' . $asked_cap->() . ')');
cmp_ok($inflight - $inflight0, '<=', $cap, "and are in flight there ($inflight, $inflight0 held before)");
cmp_ok($refused, '>=', @keys - $cap, "the rest are refused, each with one error line ($refused)");

# 200 other clients complete on the same workers while those lookups wait.
my $ok = 0;
for (1 .. 200) {
    $ok++ if client('ordinary', 'trusted')->{out} eq "ordinary\n";
}
is($ok, 200, '200 clients of an ordinary server complete while the authority holds its answers');
is(slurp_num('inflight'), $inflight, 'and the lookups are still waiting meanwhile');

# The counters say what happened.
my $status = $t->run_cmd(['curl', '-s', 'http://127.0.0.1:' . $t->port('http') . '/status'])->{out};
like($status, qr/^nginx_noise_auth_requests_total\{result="allow"\} [1-9]\d*$/m, 'noise_status counts allowing answers');
like($status, qr/^nginx_noise_auth_requests_total\{result="deny"\} [1-9]\d*$/m, 'denying ones');
like($status, qr/^nginx_noise_auth_requests_total\{result="timeout"\} [1-9]\d*$/m, 'timeouts');
like($status, qr/^nginx_noise_auth_requests_total\{result="error"\} [1-9]\d*$/m, 'errors');
like($status, qr/^nginx_noise_auth_cache_total\{result="hit"\} [1-9]\d*$/m, 'zone hits');
like($status, qr/^nginx_noise_auth_cache_total\{result="miss"\} [1-9]\d*$/m, 'and misses');

# A reload while lookups wait: the old worker finishes them, then exits.
my @old = $t->worker_pids;
$t->reload;
$t->write_file('release', '');
waitpid($_, 0) for @pids;
my $admitted = grep { $t->read_file("cap-$_.out") =~ /^held device=d-/ } 0 .. $#keys;
cmp_ok($admitted, '>=', 1, "after the reload the held lookups answer and their clients get in ($admitted)");
is($admitted + $refused, scalar @keys, 'every client was either admitted or refused');
ok($t->wait_for(10, sub { !grep { kill 0, $_ } @old }), 'the old workers exit once their lookups are done');
unlike($t->error_log, qr/open socket #\d+ left|\[alert\]/, 'no socket left open, no alert');

# noise_auth_request_concurrency 1 wait: over the cap the handshakes wait for a slot
# instead of being refused; one lookup per worker at a time reaches the authority.
unlink "$dir/release";
my @qkeys = map { [fresh()] } 1 .. 6;
$mark = $t->error_log_mark;
@pids = ();
for my $i (0 .. $#qkeys) {
    my ($name) = @{$qkeys[$i]};
    my $p = $t->fork_helper;
    if (!$p) {
        my $r = $t->noise_client($t->port('queue'), '', '--key', "$dir/$name.key");
        $t->write_file("queue-$i.out", $r->{out});
        exit 0;
    }
    push @pids, $p;
}
my $asked = sub { scalar grep { requests($_->[1]) } @qkeys };
ok($t->wait_for(10, sub { $asked->() >= 1 }), 'the first lookups reach the authority');
sleep 1;
cmp_ok($asked->(), '<=', $t->workers, 'the others wait: at most one lookup per worker (' . $asked->() . ')');
$t->write_file('release', '');
waitpid($_, 0) for @pids;
my $queued_in = grep { $t->read_file("queue-$_.out") =~ /^queued device=d-/ } 0 .. $#qkeys;
is($queued_in, scalar @qkeys, 'once the authority answers, every waiting client gets in');
is($asked->(), scalar @qkeys, 'each was asked once, in turn');
is(join('', errors_since($mark)), '', 'nothing refused, no error line');

# Handshake timers that end lookups in flight and lookups still queued: both cancelled.
unlink "$dir/release";
$workers = $t->worker_set;
$mark = $t->error_log_mark;
@pids = map { my ($name) = fresh(); $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('qtimer'), '--key', "$dir/$name.key") } 1 .. 4;
ok($t->wait_for(10, sub { (() = $t->error_log_since($mark) =~ /\[info\].*handshake timed out/g) >= 4 }),
    'the handshake timer ends every wait, in flight or queued');
is(join('', errors_since($mark)), '', 'no error line');
is($t->worker_set, $workers, 'no worker died');
$t->write_file('release', '');
($k) = fresh();
is(client('queue', $k)->{out} =~ /^queued device=d-/ ? 1 : 0, 1, 'the queue still works afterwards');

# A worker that exits at once (SIGTERM, as at a fast shutdown) while lookups wait: its
# clients are closed, not left hanging; it dies of no signal; the master starts another.
unlink "$dir/release";
$mark = $t->error_log_mark;
my @held = map { [fresh()] } 1 .. 4;
@pids = map { $t->spawn($t->cli, 'connect', '127.0.0.1:' . $t->port('hold'), '--key', "$dir/$_->[0].key") } @held;
ok($t->wait_for(10, sub { (grep { requests($_->[1]) } @held) == @held }), 'four lookups in flight');
my @before = $t->worker_pids;
kill 'TERM', @before;
ok($t->wait_for(10, sub { !grep { kill 0, $_ } @before }), 'the workers exit at once, lookups in flight');
ok($t->wait_for(10, sub { !grep { waitpid($_, 1) == 0 } @pids }), 'their clients are closed, none left hanging');
ok($t->wait_for(10, sub { $t->worker_pids >= $t->workers }), 'the master starts new workers');
unlike($t->error_log_since($mark), qr/exited on signal|\[alert\]/, 'no worker crashed, no alert');
$t->write_file('release', '');
($k) = fresh();
like(client('allow', $k)->{out}, qr/^device=d-/, 'and lookups work again');

done_testing;
